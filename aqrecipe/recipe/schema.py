"""The recipe JSON Schema, loaded once from package data, and the names it lists."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_RESOURCE = "data/recipe.schema.json"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The recipe schema (JSON Schema 2020-12) shipped inside the package."""
    text = resources.files("aqrecipe").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


def section_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one recipe section (``$defs[name]``), usable on its own."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **load_schema()["$defs"][name]}


@functools.cache
def validator() -> Draft202012Validator:
    """A validator for :func:`load_schema` (the schema itself is checked once here)."""
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(_inline_refs(schema, schema["$defs"]))


@functools.cache
def section_validator(name: str) -> Draft202012Validator:
    """A validator of ``{name: section}``: error paths start at the section's key, as in a whole recipe."""
    schema = load_schema()
    return Draft202012Validator({"type": "object", "properties": {name: _inline_refs(schema["$defs"][name],
                                                                                     schema["$defs"])}})


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace local ``#/$defs/x`` references by their targets.

    The recipe schema is not recursive, and following ``$ref`` through the referencing
    registry doubles validation time for recipes with thousands of rules.
    """
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    local = isinstance(ref, str) and ref.startswith("#/$defs/")
    out: dict[str, Any] = dict(_inline_refs(defs[ref[len("#/$defs/"):]], defs)) if local else {}
    for key, value in node.items():
        if key == "$ref" and local:
            continue
        out[key] = value if key == "$defs" else _inline_refs(value, defs)  # siblings (description) win
    return out


def _defs() -> dict[str, Any]:
    return load_schema()["$defs"]


@functools.cache
def type_names() -> tuple[str, ...]:
    """GGML type names a rule or ``default`` may name, in schema order."""
    return tuple(_defs()["typeName"]["enum"])


@functools.cache
def mixture_names() -> tuple[str, ...]:
    """llama.cpp file-type (mixture) names, in schema order."""
    return tuple(_defs()["mixtureName"]["enum"])


def section_defaults(section: str) -> dict[str, Any]:
    """``{property: default}`` declared in ``$defs/<section>`` (e.g. ``evaluation``)."""
    props = _defs()[section].get("properties", {})
    return {name: spec["default"] for name, spec in props.items() if "default" in spec}
