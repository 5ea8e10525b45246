"""Measurement + budget -> one type per tensor -> exact-name rules for :func:`aqrecipe.plan.compile_plan`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping

from aqrecipe.errors import InfeasibleBudgetError, PlanError
from aqrecipe.plan import PlanSpec, Rule
from aqrecipe.quant.blocktypes import fallback_for
from aqrecipe.plan.render import human_bytes
from aqrecipe.planner.measurement import Measurement
from aqrecipe.quant.sizes import tensor_bytes
from aqrecipe.planner.solver import Group, Option, Solution, min_bytes, min_error_choice, smallest_size_for_error, solve_dp, solve_lagrangian

#: problems up to this many (groups x options x grid cells) use the exact DP
DP_WORK_LIMIT = 40_000_000


@dataclass(frozen=True)
class Budget:
    """Total file-tensor bytes (fixed tensors included) and/or a cap on predicted total KLD."""

    total_bytes: int | None = None
    max_kld: float | None = None

    @classmethod
    def from_bpw(cls, bpw: float, m: Measurement, max_kld: float | None = None) -> Budget:
        return cls(int(bpw * m.n_params / 8), max_kld)


@dataclass(frozen=True)
class PlanResult:
    types: dict[str, str]  # gguf name -> type, in model order
    total_bytes: int  # all tensors, fixed ones included
    predicted_kld: float
    method: str


def groups_of(m: Measurement) -> list[Group]:
    """One group per tensor, sorted by name; options sorted by (bytes, type)."""
    return [
        Group(t.gguf_name, tuple(Option(o.type, o.n_bytes, m.predicted(t, o))
                                 for o in sorted(t.options, key=lambda o: (o.n_bytes, o.type))))
        for t in sorted(m.tensors, key=lambda t: t.gguf_name)
    ]


def _solve(groups: list[Group], budget: int, method: str) -> Solution | None:
    if not groups:  # every tensor pinned: nothing to choose
        return Solution((), 0, 0.0, "fixed") if budget >= 0 else None
    if method == "auto":
        cells = min(budget, 1 << 16)
        method = "dp" if len(groups) * max(len(g.options) for g in groups) * cells <= DP_WORK_LIMIT else "lagrangian"
    return solve_dp(groups, budget) if method == "dp" else solve_lagrangian(groups, budget)


def _infeasible(m: Measurement, groups: list[Group], budget: Budget, best: Solution | None,
                fixed: int | None = None) -> InfeasibleBudgetError:
    fixed = m.fixed_bytes if fixed is None else fixed
    parts = []
    if budget.total_bytes is not None:
        if best is None:
            pinned = fixed - m.fixed_bytes
            parts.append(f"the size budget {human_bytes(budget.total_bytes)} is below the smallest possible "
                         f"model, {human_bytes(min_bytes(groups) + fixed)}"
                         + (f" ({human_bytes(pinned)} of it in tensors pinned by super-weight protection)"
                            if pinned else ""))
        else:
            parts.append(f"the best predicted KLD within {human_bytes(budget.total_bytes)} is "
                         f"{best.total_error:.5g}, above the cap {budget.max_kld:.5g}")
    if budget.max_kld is not None:
        need = smallest_size_for_error(groups, budget.max_kld)
        if need is None:
            lowest = sum(g.options[i].error for g, i in zip(groups, min_error_choice(groups)))
            parts.append(f"no assignment of the candidates reaches KLD {budget.max_kld:.5g} "
                         f"(the lowest predicted is {lowest:.5g})")
        else:
            parts.append(f"the smallest size meeting KLD <= {budget.max_kld:.5g} is about "
                         f"{human_bytes(need + fixed)} ({need + fixed} bytes, "
                         f"{8 * (need + fixed) / m.n_params:.3f} bpw)")
    return InfeasibleBudgetError(
        "no type assignment meets both the size budget and the quality cap: " + "; ".join(parts),
        hint="raise target_bpw/target_bytes, relax max_kld, or add higher-precision candidates",
    )


def _pinned(m: Measurement, fixed_types: Mapping[str, str]) -> tuple[int, float]:
    """Bytes (after llama.cpp's row fallback) and predicted KLD of the tensors pinned to a type."""
    n_bytes, error = 0, 0.0
    for t in m.tensors:
        if t.gguf_name in fixed_types:
            real = fallback_for(fixed_types[t.gguf_name], t.shape[-1])
            n_bytes += tensor_bytes(real, t.shape)
            error += next((m.predicted(t, o) for o in t.options if o.type == real), 0.0)
    return n_bytes, error


def solve_plan(m: Measurement, budget: Budget, *, method: str = "auto",
               fixed_types: Mapping[str, str] | None = None) -> PlanResult:
    """Minimise predicted KLD under ``budget.total_bytes`` (or, with only a cap, minimise size).

    ``fixed_types`` (gguf name -> type) pins tensors, e.g. those super-weight
    protection raised: their bytes are taken off the budget first and only the
    rest is spent on the other tensors. Raises :class:`InfeasibleBudgetError`
    when no assignment meets both.
    """
    if budget.total_bytes is None and budget.max_kld is None:
        raise PlanError("the budget has neither a size nor a quality cap", hint="give target_bpw or max_kld")
    fixed_types = dict(fixed_types or {})
    unknown = sorted(set(fixed_types) - {t.gguf_name for t in m.tensors})
    if unknown:
        raise PlanError(f"pinned tensors {unknown} are not among the measured ones",
                        hint="pin quantizable tensors by their llama.cpp names")
    pinned_bytes, pinned_error = _pinned(m, fixed_types)
    fixed = m.fixed_bytes + pinned_bytes
    groups = [g for g in groups_of(m) if g.name not in fixed_types]
    cap = None if budget.max_kld is None else budget.max_kld - pinned_error
    if budget.total_bytes is None:  # then cap is set
        need = smallest_size_for_error(groups, cap)
        if need is None:
            raise _infeasible(m, groups, Budget(None, cap), None, fixed)
        sol = _solve(groups, need, method)
    else:
        sol = _solve(groups, budget.total_bytes - fixed, method)
        if sol is None or (cap is not None and sol.total_error > cap):
            raise _infeasible(m, groups, Budget(budget.total_bytes, cap), sol, fixed)
    assert sol is not None
    chosen = {g.name: g.options[i].label for g, i in zip(groups, sol.choice)}
    chosen.update(fixed_types)
    types = {t.gguf_name: chosen[t.gguf_name] for t in m.tensors}
    return PlanResult(types, sol.total_bytes + fixed, sol.total_error + pinned_error, sol.method)


def plan_types(m: Measurement, budget: Budget, *, method: str = "auto") -> dict[str, str]:
    """gguf name -> type for every quantizable tensor (see :func:`solve_plan`)."""
    return solve_plan(m, budget, method=method).types


def as_rules(types: dict[str, str], *, origin: str = "planner") -> tuple[Rule, ...]:
    """Exact-name rules, one per tensor (they beat any regex or glob rule)."""
    return tuple(Rule(pattern=name, type=t, kind="exact", origin=origin) for name, t in types.items())


def as_plan_spec(types: dict[str, str]) -> PlanSpec:
    """A PlanSpec whose exact rules reproduce ``types``; the default is the type with most tensors."""
    default = sorted(Counter(types.values()).items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return PlanSpec(default=default, rules=as_rules(types))
