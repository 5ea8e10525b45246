"""The recipe's ``super_weights:`` section: detection and protection settings.

The dataclasses are recipe grammar and live in :mod:`aqrecipe.recipe.sections` (validated once by
the recipe's schema, built by its one converter); they are re-exported here for the stage functions.
"""

from __future__ import annotations

from typing import Any

from aqrecipe.recipe.schema import section_schema
from aqrecipe.recipe.sections import DetectSpec, ProtectSpec, SuperWeightsSection

__all__ = ["SCHEMA_FRAGMENT", "DetectSpec", "ProtectSpec", "SuperWeightsSection"]


#: The ``super_weights:`` section of ``aqrecipe/data/recipe.schema.json``.
SCHEMA_FRAGMENT: dict[str, Any] = section_schema("super_weights")
