"""Recipes: JSON Schema validation with YAML line:column positions, frozen dataclasses, YAML dump.

Public API::

    load_recipe(path) -> Recipe
    parse_recipe(text, source_path=None) -> Recipe
    recipe_from_dict(data) -> Recipe
    validate_data(data) -> list[RecipeIssue]
    dump_recipe_yaml(recipe_or_dict) -> str
    recipe_error(issues, source=None) -> RecipeError
    Recipe.to_dict() / .position_of(json_path) / .issue_at(json_path, code, message, ...) / .resolve_path(p)

Every failure raises :class:`aqrecipe.errors.RecipeError` whose ``issues`` list
:class:`RecipeIssue` objects (all problems, not only the first).

Issue codes (stable; docs/recipe-errors.md has the details):

====== ==========================================================================
R001   recipe file not found
R002   recipe file cannot be read
R003   recipe file is not valid UTF-8
R010   YAML syntax error
R011   tab character used for indentation
R012   duplicate key
R013   YAML feature not allowed (custom tag, non-string key, recursive alias)
R014   YAML aliases or merge keys expand beyond the limit (an alias bomb)
R020   recipe is empty
R021   recipe is not a mapping
R101   unknown key
R102   missing required key
R103   wrong type
R104   value out of range
R105   unknown quantization type
R106   unknown mixture
R107   unsupported recipe version
R108   missing version
R109   invalid regular expression in a ``re:`` rule
R110   empty rules entry or empty match pattern
R111   quantization has neither mixture nor default
R112   value not allowed (other enumerations / schema violations)
R113   number is not finite (NaN or infinity)
R114   regular expression the linear-time matcher cannot run (backreference, lookaround, ...)
R201   rule matches no tensor (model-aware; the compiler builds it with ``issue_at``)
R202   model not found (model-aware; the compiler builds it with ``issue_at``)
R203   imatrix file not found (``validate``, via aqrecipe.apply.preflight)
R204   calibration text or JSON-lines file not found (``validate``, via aqrecipe.apply.preflight)
R205   evaluation text file not found (``validate``, via aqrecipe.apply.preflight)
====== ==========================================================================

This package imports neither torch nor the Rust extension.
"""

from aqrecipe.errors import RecipeError
from aqrecipe.recipe.dump import dump_recipe_yaml
from aqrecipe.recipe.issues import CODES, RecipeIssue, recipe_error
from aqrecipe.recipe.loader import load_recipe, parse_recipe, recipe_from_dict, validate_data
from aqrecipe.recipe.model import EvaluationSpec, OutputSpec, QuantizationSpec, Recipe, TensorRule, rule_kind
from aqrecipe.recipe.schema import load_schema, mixture_names, type_names

__all__ = [
    "CODES",
    "EvaluationSpec",
    "OutputSpec",
    "QuantizationSpec",
    "Recipe",
    "RecipeError",
    "RecipeIssue",
    "TensorRule",
    "dump_recipe_yaml",
    "load_recipe",
    "load_schema",
    "mixture_names",
    "parse_recipe",
    "recipe_error",
    "recipe_from_dict",
    "rule_kind",
    "type_names",
    "validate_data",
]
