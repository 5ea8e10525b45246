"""The stage apply calls: imatrix -> measure -> solve -> rules (+ the planner report)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from aqrecipe.plan import Rule, compile_plan
from aqrecipe.planner.config import PlannerSpec
from aqrecipe.planner.measure import measure
from aqrecipe.planner.planner import Budget, as_plan_spec, as_rules, solve_plan
from aqrecipe.planner.report import PlannerReport, build_report

if TYPE_CHECKING:
    from aqrecipe.imatrix.data import ImatrixData
    from aqrecipe.models.protocol import ModelRef

log = logging.getLogger(__name__)


def plan_dynamic(model_ref: ModelRef, planner_section: PlannerSpec | dict, imatrix: ImatrixData | None,
                 work_dir: str | Path | None, *, n_threads: int | None = None,
                 fixed_types: Mapping[str, str] | None = None) -> tuple[tuple[Rule, ...], PlannerReport]:
    """Measure (or reuse the measurement in ``work_dir``), solve the budget, return exact rules.

    ``model_ref``: "demo", a folder or a ModelSource. ``imatrix``: ImatrixData
    (the same one the packer will use) or None. ``fixed_types`` pins tensors
    (gguf name -> type; super-weight protection): their bytes count against the
    budget and their rules carry the pinned type. The rules go to
    :func:`aqrecipe.plan.compile_plan` ahead of (or instead of) the recipe's.
    """
    from aqrecipe.calibration.hf_model import as_source

    spec = planner_section if isinstance(planner_section, PlannerSpec) else PlannerSpec.from_dict(planner_section)
    source = as_source(model_ref)
    m = measure(source, imatrix, spec.candidates, spec.measurement, Path(work_dir) if work_dir else None,
                n_threads=n_threads)
    budget = Budget(spec.budget_bytes(m.n_params), spec.max_kld)
    result = solve_plan(m, budget, fixed_types=fixed_types)
    rules = as_rules(result.types)
    plan = compile_plan(source, as_plan_spec(result.types), model_ref=str(source.path))
    if plan.total_bytes != result.total_bytes:  # the measurement's bytes and the plan's must agree
        raise AssertionError(f"planner sized {result.total_bytes} bytes, compiled plan {plan.total_bytes}")
    log.info("planner: %d tensors, %.3f bpw, predicted KLD %.4g (%s)", len(rules), plan.bits_per_weight,
             result.predicted_kld, result.method)
    report = build_report(plan, m, budget={"total_bytes": budget.total_bytes, "max_kld": budget.max_kld,
                                           **spec.to_dict()}, method=result.method)
    return rules, report
