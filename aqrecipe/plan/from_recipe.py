"""Recipe -> plan: open the recipe's model (headers only) and compile its rules; or read a plan file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from aqrecipe.errors import PlanError
from aqrecipe.models import open_model
from aqrecipe.plan import Plan, PlanSpec, Rule, compile_plan, load_plan
from aqrecipe.recipe import Recipe, load_recipe, parse_recipe


def recipe_rules(recipe: Recipe) -> list[Rule]:
    """The recipe's tensor rules as plan rules (origin names the list index)."""
    return [
        Rule(pattern=r.match_text, type=r.type, kind=r.kind, origin=f"rules[{r.index}]", rounding=r.rounding)
        for r in recipe.quantization.rules
    ]


def plan_from_recipe(recipe: Recipe, *, extra_rules: Sequence[Rule] = (), model_override: str | None = None,
                     allow_requantize: bool = False) -> Plan:
    """Open the recipe's model (headers only) and compile the plan.

    CLI rules (``--set``) come before the recipe's, so they win within a kind. ``allow_requantize``
    (``--allow-requantize``) accepts an already quantized GGUF; the plan records it so that apply
    reopens the model with the same permission.
    """
    model_ref = model_override or recipe.model
    base_dir = recipe.source_path.parent if recipe.source_path else None
    source = open_model(model_ref, base_dir=base_dir, allow_requantize=allow_requantize)
    options: dict = {"ternary_scale": recipe.quantization.ternary_scale}
    if allow_requantize:  # only when given: plans (and their hashes) without it stay as they were
        options["allow_requantize"] = True
    spec = PlanSpec(
        mixture=recipe.quantization.mixture,
        default=recipe.quantization.default,
        rules=tuple(extra_rules) + tuple(recipe_rules(recipe)),
        rounding=recipe.quantization.rounding,
    )
    return compile_plan(
        source,
        spec,
        model_ref=model_ref,
        recipe_text=recipe.source_text,
        recipe_path=str(recipe.source_path) if recipe.source_path else None,
        options=options,
    )


def load_target(target: Path, *, extra_rules: Sequence[Rule] = (), model_override: str | None = None,
                allow_requantize: bool = False) -> tuple[Plan, Recipe | None]:
    """A recipe (.yaml/.yml) is compiled; a plan (.json) is read as it is (``allow_requantize`` added)."""
    if target.suffix == ".json":
        if extra_rules or model_override:
            flag = "--set" if extra_rules else "--model"
            raise PlanError(f"{flag} cannot change a compiled plan", hint="pass the recipe instead, or recompile")
        plan = load_plan(target)
        if allow_requantize and not plan.options.get("allow_requantize"):
            plan = replace(plan, options={**plan.options, "allow_requantize": True})
        recipe = None
        if plan.recipe_text is not None:
            recipe = parse_recipe(plan.recipe_text, source_path=Path(plan.recipe_path) if plan.recipe_path else None)
        return plan, recipe
    recipe = load_recipe(target)
    plan = plan_from_recipe(recipe, extra_rules=extra_rules, model_override=model_override,
                            allow_requantize=allow_requantize)
    return plan, recipe
