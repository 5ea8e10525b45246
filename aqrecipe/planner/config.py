"""The recipe's ``planner:`` section: its JSON Schema fragment, and its frozen dataclasses
(recipe grammar, defined in :mod:`aqrecipe.recipe.sections`)."""

from __future__ import annotations

from typing import Any

from aqrecipe.recipe.schema import section_schema
from aqrecipe.recipe.sections import DEFAULT_CANDIDATES, MeasurementSpec, PlannerSpec

__all__ = ["DEFAULT_CANDIDATES", "SCHEMA_FRAGMENT", "MeasurementSpec", "PlannerSpec"]


#: The ``planner:`` section of ``aqrecipe/data/recipe.schema.json``.
SCHEMA_FRAGMENT: dict[str, Any] = section_schema("planner")
