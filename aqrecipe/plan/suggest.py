"""Suggest a dynamic recipe of about the same size when a uniform low-bit file collapses.

The suggestion keeps the collapsed run's model and imatrix but lets the planner
spend the same bytes where they matter (typically attention, embeddings and the
first ffn_down layers get more bits, the bulk of the MLP fewer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aqrecipe.plan import Plan
    from aqrecipe.recipe import Recipe


def suggest_dynamic_recipe(plan: Plan, recipe: Recipe | None) -> str:
    """YAML text of a planner recipe with the byte budget of ``plan``."""
    from aqrecipe.recipe import dump_recipe_yaml

    imatrix: dict[str, Any] = (recipe.stage("imatrix") if recipe is not None else None) or {"type": "compute"}
    data: dict[str, Any] = {
        "version": 1,
        "name": f"{(recipe.name if recipe and recipe.name else 'model')}-dynamic",
        "description": f"planner-chosen types at the size of the collapsed plan ({plan.total_bytes} bytes)",
        "model": plan.model,
        "imatrix": imatrix,
        "planner": {"type": "budget", "target_bytes": plan.total_bytes},
        "quantization": {"default": "Q4_K"},
        "coherence": {"enabled": True},
    }
    return dump_recipe_yaml(data)
