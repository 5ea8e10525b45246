"""Entry points: read, parse and validate a recipe, collecting every issue."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aqrecipe.errors import RecipeError
from aqrecipe.formats.bounded import human, limit_for, read_bounded
from aqrecipe.recipe import issues as codes
from aqrecipe.recipe.excerpt import short_repr
from aqrecipe.recipe.issues import RecipeIssue, recipe_error, sort_issues
from aqrecipe.recipe.model import Recipe, build_recipe
from aqrecipe.recipe.sections import build_sections
from aqrecipe.recipe.validate import collect_issues, describe_type
from aqrecipe.recipe.yaml_positions import PositionIndex, decode_utf8, parse_yaml


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate the recipe file at ``path``.

    Raises :class:`aqrecipe.errors.RecipeError` listing every issue found
    (file problems R001-R003 come alone: there is nothing else to check).
    """
    p = Path(path)
    try:  # bounded: /dev/zero or a 20 GB file is refused before it is read (R002)
        raw = read_bounded(p, kind="recipe", what="recipe file", error=lambda message, hint: _fail(
            [RecipeIssue(codes.FILE_UNREADABLE, None, None, "$", message, value=str(p),
                         allowed=f"a regular file of at most {human(limit_for('recipe'))}")], p))
    except FileNotFoundError:
        raise _fail([RecipeIssue(codes.FILE_NOT_FOUND, None, None, "$", f"recipe file not found: {str(p)!r}",
                                 value=str(p), allowed="a path to an existing .yaml file")], p) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _fail([RecipeIssue(codes.FILE_UNREADABLE, None, None, "$",
                                 f"recipe file {str(p)!r} cannot be read: {reason}", value=str(p))], p) from None
    return parse_recipe(raw, source_path=p)


def parse_recipe(text: str | bytes, source_path: str | os.PathLike[str] | None = None) -> Recipe:
    """Parse and validate recipe YAML (bytes must be UTF-8); ``source_path`` names it in messages
    and anchors relative paths.
    """
    path = Path(source_path) if source_path is not None else None
    if isinstance(text, bytes):
        decoded, bad = decode_utf8(text)
        if bad is not None:
            raise _fail([bad], path)
        text = decoded or ""
    parsed = parse_yaml(text)
    found = list(parsed.issues)
    if parsed.data is None and not found:
        found.append(RecipeIssue(codes.EMPTY, 1, 1, "$", "recipe is empty (no YAML content)",
                                 allowed="a mapping starting with 'version: 1'"))
    elif parsed.data is not None:
        found.extend(_without_noise(_check(parsed.data, parsed.positions), parsed.refused))
    if found:
        raise _fail(found, path)
    return build_recipe(parsed.data, source_path=path, source_text=text, positions=parsed.positions,
                        sections=build_sections(parsed.data))


def recipe_from_dict(data: Any) -> Recipe:
    """Validate plain data (as ``Recipe.to_dict()`` gives) the same way; positions are unknown."""
    found = _check(data, PositionIndex(None))
    if found:
        raise _fail(found, None)
    return build_recipe(data, sections=build_sections(data))


def validate_data(data: Any) -> list[RecipeIssue]:
    """Every issue of plain recipe data, sorted (empty list = valid). Never raises."""
    return sort_issues(_check(data, PositionIndex(None)))


def _check(data: Any, positions: PositionIndex) -> list[RecipeIssue]:
    if not isinstance(data, dict):
        pos = positions.value_position(()) or (None, None)
        shown = f" {short_repr(data)}" if isinstance(data, (str, int, float)) else ""
        return [RecipeIssue(codes.NOT_MAPPING, *pos, "$",
                            f"recipe must be a mapping of keys, got {describe_type(data)}{shown}",
                            value=data, allowed="a mapping starting with 'version: 1'")]
    return collect_issues(data, positions)


def _without_noise(schema_issues: list[RecipeIssue], refused: list[str]) -> list[RecipeIssue]:
    """Drop schema issues at or under a value whose YAML was refused (R013): one cause, one issue."""
    refused = [r for r in refused if r != "$"]  # a refused root would hide everything
    return [i for i in schema_issues
            if not any(i.json_path == r or i.json_path.startswith((r + ".", r + "[")) for r in refused)]


def _fail(found: list[RecipeIssue], path: Path | None) -> RecipeError:
    source = str(path) if path is not None else None
    stamped = [RecipeIssue(i.code, i.line, i.column, i.json_path, i.message, i.value, i.allowed, i.suggestion,
                           i.source or source) for i in found]
    return recipe_error(sort_issues(stamped), source)
