"""The ``smoothquant:`` recipe section: JSON Schema fragment and error; the frozen config
(:class:`SmoothQuantConfig`, recipe grammar) is defined and parsed in :mod:`aqrecipe.recipe.sections`.

Example::

    smoothquant:
      alpha: 0.5                 # number in [0, 1] or "auto"
      mappings: {type: auto}     # or {type: explicit, groups: [{norm: ..., linears: [...], alpha: 0.6}]}
      activations: {type: dynamic-per-token}   # or {type: static-per-tensor}
      output: {type: compressed-tensors, path: out/w8a8}   # or {type: gguf-q8_0, path: out/x.gguf}
      problem_threshold: 0.05
"""

from __future__ import annotations

from typing import Any

from aqrecipe.errors import AqrecipeError
from aqrecipe.recipe.schema import section_schema
from aqrecipe.recipe.sections import DEFAULT_GRID, GroupSpec, SmoothQuantConfig

__all__ = ["DEFAULT_GRID", "SCHEMA_FRAGMENT", "GroupSpec", "SmoothQuantConfig", "SmoothQuantError"]


class SmoothQuantError(AqrecipeError):
    """A SmoothQuant setting, mapping or result is invalid."""

    code = "AQ1100"


#: The ``smoothquant:`` section of ``aqrecipe/data/recipe.schema.json``.
SCHEMA_FRAGMENT: dict[str, Any] = section_schema("smoothquant")
