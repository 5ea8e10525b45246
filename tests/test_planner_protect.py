"""The planner pays for super-weight protection: pinned tensors come off the budget first."""

from __future__ import annotations

from pathlib import Path

import pytest

from aqrecipe.errors import InfeasibleBudgetError, PlanError
from aqrecipe.planner import Budget, solve_plan
from aqrecipe.planner.synthetic import synthetic_measurement


def _max_step(m, pinned) -> int:
    """The largest byte gap between neighbouring options of any free tensor: one solver step."""
    return max(b.n_bytes - a.n_bytes for t in m.tensors if t.gguf_name not in pinned
               for a, b in zip(t.options, t.options[1:]))


def test_pinned_tensors_are_paid_from_the_budget() -> None:
    m = synthetic_measurement(n_layers=8)
    budget = Budget.from_bpw(3.0, m)
    free = solve_plan(m, budget)
    pinned = {"blk.1.ffn_down.weight": "F16", "blk.2.ffn_down.weight": "Q8_0"}
    assert all(free.types[n] != t for n, t in pinned.items())  # the solver alone would not pick them
    r = solve_plan(m, budget, fixed_types=pinned)
    assert {n: r.types[n] for n in pinned} == pinned
    assert budget.total_bytes - _max_step(m, pinned) < r.total_bytes <= budget.total_bytes
    assert r.total_bytes == sum(t.option(r.types[t.gguf_name]).n_bytes for t in m.tensors)
    # what the old order did (solve, then let protection override) overshoots the target
    overridden = sum(t.option(pinned.get(t.gguf_name, free.types[t.gguf_name])).n_bytes for t in m.tensors)
    assert overridden > budget.total_bytes
    assert r.predicted_kld > free.predicted_kld  # the free tensors lost bytes to the pinned ones


def test_pinned_tensors_that_do_not_fit_or_do_not_exist() -> None:
    m = synthetic_measurement(n_layers=2)
    everything = {t.gguf_name: "F16" for t in m.tensors}
    with pytest.raises(InfeasibleBudgetError, match="below the smallest possible model.*pinned by super-weight"):
        solve_plan(m, Budget.from_bpw(3.0, m), fixed_types={n: "F16" for n in list(everything)[:10]})
    assert solve_plan(m, Budget.from_bpw(16.0, m), fixed_types=everything).types == everything
    with pytest.raises(PlanError, match="not among the measured"):
        solve_plan(m, Budget.from_bpw(3.0, m), fixed_types={"blk.9.attn_q.weight": "Q8_0"})


@pytest.mark.slow
def test_protection_and_planner_meet_the_target_on_a_tiny_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Planted super weight, protection at F16, planner at 6.0 bpw: the final plan stays under 6.0 bpw."""
    from test_super_weights import _variant

    from aqrecipe.plan.from_recipe import plan_from_recipe
    from aqrecipe.quant.sizes import tensor_bytes
    from aqrecipe.recipe import load_recipe
    from aqrecipe.apply.stages import replan, run_stages

    model = _variant(tiny_llama_dir, tmp_path / "planted", 1.5)
    target = 6.0
    path = tmp_path / "r.yaml"
    path.write_text(
        f"version: 1\nmodel: {model}\n"
        "super_weights:\n  detect: {type: activation, samples: 4, seq_len: 16}\n"
        "  protect: {type: raise-tensor, tensor_type: F16}\n"
        f"planner: {{type: budget, target_bpw: {target}, candidates: [Q4_0, Q5_0, Q8_0],"
        " measurement: {type: proxy, calibrate_tensors: 0}}\n"
        "quantization: {default: Q4_0}\n")
    recipe = load_recipe(path)
    plan0 = plan_from_recipe(recipe)
    outcome = run_stages(plan0, recipe, None, tmp_path / "work")
    assert outcome.fixed_types == {"blk.0.ffn_down.weight": "F16"}
    plan = replan(recipe, [], outcome, plan0)
    types = {e.gguf_name: e.type for e in plan.entries}
    assert types["blk.0.ffn_down.weight"] == "F16"
    budget = int(target * plan.n_params / 8)
    step = max(tensor_bytes("Q8_0", e.shape) - tensor_bytes("Q4_0", e.shape) for e in plan.entries if e.quantized)
    assert budget - step < plan.total_bytes <= budget
    assert plan.bits_per_weight <= target
