"""Recipe -> YAML text with a stable, readable key order (for ``quantize --emit-recipe``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from aqrecipe.recipe.model import Recipe

# Key order per mapping kind; keys not listed follow in sorted order.
_ORDER: dict[str, tuple[str, ...]] = {
    "": ("version", "name", "description", "model", "output", "imatrix", "super_weights", "smoothquant",
         "planner", "quantization", "evaluation", "coherence"),
    "output": ("format", "path", "dtype"),
    "quantization": ("mixture", "default", "rules", "allow_without_imatrix", "ternary_scale"),
    "rules": ("match", "role", "type"),
    "evaluation": ("enabled", "text", "chunks", "context"),
}


def _ordered(value: Any, section: str) -> Any:
    if isinstance(value, Mapping):
        order = _ORDER.get(section, ()) or ("type",)  # tagged nodes read best with their tag first
        keys = [k for k in order if k in value] + sorted((k for k in value if k not in order), key=str)
        return {k: _ordered(value[k], k if section == "" or k == "rules" else section) for k in keys}
    if isinstance(value, (list, tuple)):
        return [_ordered(v, section) for v in value]
    return value


def dump_recipe_yaml(recipe_or_dict: Recipe | Mapping[str, Any]) -> str:
    """YAML text of a Recipe (or recipe-shaped data, dumped as given without validation)."""
    data = recipe_or_dict.to_dict() if isinstance(recipe_or_dict, Recipe) else recipe_or_dict
    return yaml.safe_dump(_ordered(data, ""), sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=100)
