"""Stages of ``apply`` that turn statistics into extra tensor rules before packing.

After the importance matrix: super-weight protection (raise the tensors that
hold super weights, emphasise their imatrix columns) and the dynamic planner
(one type per tensor under a size budget). Both produce exact-name rules, so
their result is an ordinary plan that ``compile`` could have printed.

Rule precedence within exact names (first wins): ``--set`` from the CLI,
protection, the planner, then the recipe's own rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from aqrecipe.plan import is_quantizable

if TYPE_CHECKING:
    from aqrecipe.imatrix import ImatrixData
    from aqrecipe.importance import SuperWeight
    from aqrecipe.plan import Plan, Rule
    from aqrecipe.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class StageOutcome:
    """The rules the stages add, the (possibly boosted) imatrix and what to report."""

    rules: list[Rule] = field(default_factory=list)
    imatrix: ImatrixData | None = None
    report: dict[str, Any] = field(default_factory=dict)
    restore: tuple[SuperWeight, ...] = ()  # super weights whose exact values simulated/safetensors output restores
    fixed_types: dict[str, str] = field(default_factory=dict)  # protected tensors: the planner must not move them


def protect_super_weights(
    plan: Plan, recipe: Recipe, imatrix: ImatrixData | None, work_dir: Path, outcome: StageOutcome
) -> None:
    """Detect super weights and add protection rules / imatrix boost (recipe ``super_weights``)."""
    from aqrecipe.importance import analyze_importance, protect_plan, save_importance
    from aqrecipe.plan.model import plan_source

    section = recipe.section("super_weights")
    if not section.enabled:
        return
    found = analyze_importance(plan_source(plan), section.detect, imatrix=imatrix)
    work_dir.mkdir(parents=True, exist_ok=True)
    save_importance(found, work_dir / "importance.json")
    from aqrecipe.plan.from_recipe import recipe_rules
    from aqrecipe.importance.protect import ORIGIN, protected_types

    user_rules = recipe_rules(recipe)  # so a stronger exact rule of the user's is kept, never lowered
    rules, boosted = protect_plan(user_rules, imatrix, found, section)
    rules = [r for r in rules if r.origin == ORIGIN]
    outcome.rules.extend(rules)
    outcome.imatrix = boosted
    outcome.fixed_types.update(protected_types(user_rules, found, section))
    if section.protect.restore_values and section.protect.type != "none":
        outcome.restore = tuple(found.super_weights)
    outcome.report["super_weights"] = {
        "verdict": found.verdict,
        "found": [sw.to_dict() for sw in found.super_weights],
        "protection_rules": [f"{r.pattern} -> {r.type}" for r in rules],
        "importance_file": str(work_dir / "importance.json"),
    }
    log.info("super weights: %s; %d protection rule(s)", found.verdict, len(rules))


def run_stages(plan: Plan, recipe: Recipe | None, imatrix: ImatrixData | None, work_dir: Path) -> StageOutcome:
    """Run the rule-producing stages the recipe asks for."""
    outcome = StageOutcome(imatrix=imatrix)
    if recipe is None:
        return outcome
    if recipe.section("super_weights") is not None:
        protect_super_weights(plan, recipe, outcome.imatrix, work_dir, outcome)
    if recipe.section("planner") is not None:
        plan_with_budget(plan, recipe, outcome.imatrix, work_dir, outcome)
    return outcome


def plan_with_budget(plan: Plan, recipe: Recipe, imatrix: ImatrixData | None, work_dir: Path, outcome: StageOutcome) -> None:
    """Measure sensitivities and solve the budget (recipe ``planner``); adds exact-name rules."""
    from aqrecipe.planner import plan_dynamic

    # protected tensors are fixed at their protected type: the planner spends only the bytes left;
    # the recipe's own types (its mixture) are the baseline the plan must measure better than
    baseline = {e.gguf_name: e.type for e in plan.entries if is_quantizable(e.gguf_name, e.shape)}
    label = f"the {plan.mixture} mixture" if plan.mixture else "the recipe's types"
    rules, report = plan_dynamic(plan.model_path, recipe.section("planner"), imatrix, work_dir / "planner",
                                 fixed_types=outcome.fixed_types, baseline=baseline, baseline_label=label)
    protected = {r.pattern for r in outcome.rules} | set(outcome.fixed_types)
    outcome.rules.extend(r for r in rules if r.pattern not in protected)
    files = report.save(work_dir / "planner-report")
    outcome.report["planner"] = {"report_files": [str(f) for f in files], "tensors": len(rules),
                                 "validation": report.validation}


def replan(recipe: Recipe, cli_rules: Sequence[Rule], outcome: StageOutcome, original: Plan) -> Plan:
    """The plan with the stages' rules (unchanged when they added none)."""
    if not outcome.rules:
        return original
    from aqrecipe.plan.from_recipe import plan_from_recipe

    return plan_from_recipe(recipe, extra_rules=list(cli_rules) + outcome.rules)
