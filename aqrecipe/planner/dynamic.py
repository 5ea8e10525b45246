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
    from aqrecipe.models.protocol import ModelRef, WeightSource
    from aqrecipe.planner.validate import Validation

log = logging.getLogger(__name__)


def with_baseline_types(candidates: tuple[str, ...], baseline: Mapping[str, str] | None) -> tuple[str, ...]:
    """The candidates plus every type the baseline uses, so that the baseline is one of the plans."""
    extra = sorted(set((baseline or {}).values()) - set(candidates))
    return tuple(candidates) + tuple(extra)


def plan_dynamic(model_ref: ModelRef, planner_section: PlannerSpec | dict, imatrix: ImatrixData | None,
                 work_dir: str | Path | None, *, n_threads: int | None = None,
                 fixed_types: Mapping[str, str] | None = None, baseline: Mapping[str, str] | None = None,
                 baseline_label: str = "the recipe's types") -> tuple[tuple[Rule, ...], PlannerReport]:
    """Measure (or reuse the measurement in ``work_dir``), solve the budget, return exact rules.

    ``model_ref``: "demo", a folder or a ModelSource. ``imatrix``: ImatrixData
    (the same one the packer will use) or None. ``fixed_types`` pins tensors
    (gguf name -> type; super-weight protection): their bytes count against the
    budget and their rules carry the pinned type. ``baseline`` (gguf name -> type):
    what the recipe gives without the planner (its mixture); its types join the
    candidates, and with ``planner.validate`` the plan is measured against it on
    held-out windows (:mod:`aqrecipe.planner.validate`) and replaced by it when it
    measures worse. The rules go to :func:`aqrecipe.plan.compile_plan` ahead of
    (or instead of) the recipe's.
    """
    from aqrecipe.calibration.hf_model import as_source

    spec = planner_section if isinstance(planner_section, PlannerSpec) else PlannerSpec.from_dict(planner_section)
    source = as_source(model_ref)
    candidates = with_baseline_types(spec.candidates, baseline)
    m = measure(source, imatrix, candidates, spec.measurement, Path(work_dir) if work_dir else None,
                n_threads=n_threads)
    budget = Budget(spec.budget_bytes(m.n_params), spec.max_kld)
    result = solve_plan(m, budget, fixed_types=fixed_types)
    types, validation = result.types, None
    if baseline is not None and spec.validate:
        base = {n: (fixed_types or {}).get(n, baseline[n]) for n in types}
        validation = _validated(source, imatrix, types, base, baseline_label, budget, spec, n_threads)
        if validation is not None and validation.shipped == "baseline":
            log.warning("planner: the plan measured KLD %.4g on held-out windows, worse than %s (%.4g): "
                        "using %s's types", validation.plan_kld, baseline_label, validation.baseline_kld,
                        baseline_label)
            types = base
    rules = as_rules(types)
    plan = compile_plan(source, as_plan_spec(types), model_ref=str(source.path))
    if types is result.types and plan.total_bytes != result.total_bytes:  # measurement and plan must agree
        raise AssertionError(f"planner sized {result.total_bytes} bytes, compiled plan {plan.total_bytes}")
    log.info("planner: %d tensors, %.3f bpw, predicted KLD %.4g (%s)", len(rules), plan.bits_per_weight,
             result.predicted_kld, result.method)
    report = build_report(plan, m, budget={"total_bytes": budget.total_bytes, "max_kld": budget.max_kld,
                                           **spec.to_dict()}, method=result.method,
                          validation=validation.to_dict() if validation is not None else None)
    return rules, report


def _validated(source: WeightSource, imatrix: ImatrixData | None, planned: dict[str, str], base: dict[str, str],
               label: str, budget: Budget, spec: PlannerSpec, n_threads: int | None) -> Validation | None:
    """The measured comparison of plan and baseline, or None (with the reason logged) where none is made."""
    if planned == base:
        log.info("planner: the plan is %s's types; nothing to validate", label)
        return None
    if source.hf_folder is None:
        log.info("planner: validation against %s skipped: it runs the Hugging Face model, and %s is a GGUF file",
                 label, source.path)
        return None
    base_bytes = compile_plan(source, as_plan_spec(base), model_ref=str(source.path)).total_bytes
    if budget.total_bytes is not None and base_bytes > budget.total_bytes:
        log.info("planner: %s (%d bytes) exceeds the budget (%d bytes): not a fallback, not compared",
                 label, base_bytes, budget.total_bytes)
        return None
    from aqrecipe.planner.validate import validate_plan

    return validate_plan(source, imatrix, planned, base, label, spec.measurement, n_threads=n_threads)
