"""The knapsack solvers: DP == brute force, Lagrangian+repair near the DP, determinism, infeasibility."""

from __future__ import annotations

import itertools
import random

import pytest

from aqrecipe.errors import InfeasibleBudgetError
from aqrecipe.planner import Budget, as_rules, plan_types, solve_plan
from aqrecipe.planner.solver import Group, Option, smallest_size_for_error, solve_dp, solve_lagrangian
from aqrecipe.planner.synthetic import synthetic_measurement


def _random_groups(rng: random.Random, n_groups: int, n_opts: int) -> list[Group]:
    groups = []
    for g in range(n_groups):
        opts = [Option(f"T{k}", rng.randint(1, 30), round(rng.uniform(0, 10), 3)) for k in range(n_opts)]
        groups.append(Group(f"g{g:02d}", tuple(sorted(opts, key=lambda o: (o.n_bytes, o.label)))))
    return groups


def _brute(groups: list[Group], budget: int) -> float | None:
    best = None
    for choice in itertools.product(*(range(len(g.options)) for g in groups)):
        b = sum(g.options[i].n_bytes for g, i in zip(groups, choice))
        if b <= budget:
            e = sum(g.options[i].error for g, i in zip(groups, choice))
            best = e if best is None else min(best, e)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_dp_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    groups = _random_groups(rng, rng.randint(1, 5), rng.randint(1, 4))
    budget = rng.randint(5, 100)
    expect = _brute(groups, budget)
    sol = solve_dp(groups, budget)
    if expect is None:
        assert sol is None
        return
    assert sol is not None and sol.total_bytes <= budget
    assert sol.total_error == pytest.approx(expect, abs=1e-9)
    assert sol.method == "dp"  # budgets this small use a 1-byte grid: exact


def test_dp_hand_computed() -> None:
    # a: (2 B, err 5) or (4 B, err 1); b: (3 B, err 4) or (6 B, err 0.5).
    # sums: 5 B err 9 | 7 B err 5 | 8 B err 5.5 | 10 B err 1.5
    a = Group("a", (Option("lo", 2, 5.0), Option("hi", 4, 1.0)))
    b = Group("b", (Option("lo", 3, 4.0), Option("hi", 6, 0.5)))
    sol = solve_dp([a, b], 8)
    assert (sol.choice, sol.total_error, sol.total_bytes) == ((1, 0), 5.0, 7)
    assert solve_dp([a, b], 6).choice == (0, 0)
    assert solve_dp([a, b], 10).total_error == 1.5
    assert solve_dp([a, b], 4) is None  # 2 + 3 > 4


@pytest.mark.parametrize("seed", range(20))
def test_lagrangian_close_to_dp(seed: int) -> None:
    rng = random.Random(1000 + seed)
    groups = _random_groups(rng, 30, 6)
    lo = sum(min(o.n_bytes for o in g.options) for g in groups)
    hi = sum(max(o.n_bytes for o in g.options) for g in groups)
    budget = rng.randint(lo, hi)
    exact = solve_dp(groups, budget)
    approx = solve_lagrangian(groups, budget)
    assert approx.total_bytes <= budget
    assert approx.total_error >= exact.total_error - 1e-9
    # gap: within one option's error span of the optimum (a few % of the total here)
    assert approx.total_error - exact.total_error <= 0.05 * exact.total_error + 10.0 / 3


def test_grid_dp_feasible_and_near_exact() -> None:
    rng = random.Random(7)
    groups = _random_groups(rng, 40, 5)
    budget = 500
    exact = solve_dp(groups, budget)
    coarse = solve_dp(groups, budget, max_cells=50)  # 10-byte grid, then greedy repair
    assert coarse.method.startswith("dp(grid")
    assert coarse.total_bytes <= budget
    assert coarse.total_error <= exact.total_error * 1.15


def test_deterministic_and_tie_break_by_name() -> None:
    same = (Option("A", 1, 1.0), Option("B", 2, 0.0))
    groups = [Group("y", same), Group("x", same)]
    # budget 3: exactly one group can upgrade; ties go to the name that sorts first
    for solver in (solve_dp, solve_lagrangian):
        sol = solver(groups, 3)
        assert sol.total_error == 1.0
        assert solver(groups, 3) == sol
    assert solve_lagrangian(groups, 3).choice == (0, 1)  # "x" upgrades before "y"


def test_smallest_size_for_error() -> None:
    a = Group("a", (Option("lo", 2, 5.0), Option("hi", 4, 1.0)))
    b = Group("b", (Option("lo", 3, 4.0), Option("hi", 6, 0.5)))
    assert smallest_size_for_error([a, b], 5.0) == 7
    assert smallest_size_for_error([a, b], 1.5) == 10
    assert smallest_size_for_error([a, b], 1.0) is None


def test_synthetic_70b_correct() -> None:
    m = synthetic_measurement()
    assert len(m.tensors) == 560 and all(len(t.options) == 10 for t in m.tensors)
    budget = Budget.from_bpw(3.5, m)
    r1 = solve_plan(m, budget)
    assert r1.method == "lagrangian+repair"
    assert r1.total_bytes <= budget.total_bytes
    assert r1.total_bytes > 0.995 * budget.total_bytes  # spends the budget
    assert solve_plan(m, budget).types == r1.types
    # more bytes never hurt; a uniform Q3_K-ish assignment of the same size is worse
    r2 = solve_plan(m, Budget.from_bpw(4.5, m))
    assert r2.predicted_kld < r1.predicted_kld
    uniform = sum(t.option("Q3_K").proxy for t in m.tensors)
    assert r1.predicted_kld < uniform
    rules = as_rules(r1.types)
    assert len(rules) == 560 and all(r.kind == "exact" for r in rules)


def test_infeasible_budget_message() -> None:
    m = synthetic_measurement(n_layers=4)
    with pytest.raises(InfeasibleBudgetError) as err:
        plan_types(m, Budget.from_bpw(2.0, m, max_kld=1e-3))
    msg = str(err.value)
    assert "best predicted KLD within" in msg and "smallest size meeting KLD <= 0.001" in msg
    assert err.value.hint and err.value.code == "AQ210"
    with pytest.raises(InfeasibleBudgetError, match="below the smallest possible model"):
        plan_types(m, Budget.from_bpw(0.5, m))
    with pytest.raises(InfeasibleBudgetError, match="no assignment of the candidates reaches"):
        plan_types(m, Budget(max_kld=1e-12))
    # a cap alone: the smallest model meeting it
    r = solve_plan(m, Budget(max_kld=0.05))
    assert r.predicted_kld <= 0.05
    assert solve_plan(m, Budget(r.total_bytes - 1000, 0.05 * 10)).predicted_kld >= r.predicted_kld - 1e-12
