"""Recipe data -> list of RecipeIssue: every JSON Schema error mapped to a stable code,
plus the semantic checks a schema cannot express (regular expressions).

Nothing here stops at the first problem.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema.exceptions import ValidationError

from aqrecipe.recipe import issues as codes
from aqrecipe.recipe.issues import RecipeIssue, did_you_mean
from aqrecipe.recipe.model import REGEX_PREFIX
from aqrecipe.recipe.paths import Key, format_path
from aqrecipe.recipe.schema import mixture_names, section_validator, type_names, validator
from aqrecipe.recipe.yaml_positions import PositionIndex

_JSON_TYPE_WORDS = {
    "object": "mapping",
    "array": "list",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean (true/false)",
    "null": "null",
}


def describe_type(value: Any) -> str:
    """How a YAML user would name the type of ``value``."""
    if value is None:
        return "null (empty value)"
    if isinstance(value, bool):
        return "boolean"
    for py, word in ((dict, "mapping"), (list, "list"), (str, "string"), (int, "integer"), (float, "number")):
        if isinstance(value, py):
            return word
    return type(value).__name__


def collect_issues(data: Any, positions: PositionIndex | None = None) -> list[RecipeIssue]:
    """All schema and semantic issues of recipe ``data`` (unsorted, positions filled when known)."""
    index = positions or PositionIndex(None)
    found: list[RecipeIssue] = []
    for error in validator().iter_errors(data):
        found.extend(_map_error(error, index))
    found.extend(_regex_issues(data, index))
    return found


def collect_section_issues(name: str, data: Any) -> list[RecipeIssue]:
    """The schema issues of one stage section on its own (paths such as ``$.smoothquant.alpha``)."""
    index = PositionIndex(None)
    found: list[RecipeIssue] = []
    for error in section_validator(name).iter_errors({name: data}):
        found.extend(_map_error(error, index))
    return found


def _at(index: PositionIndex, keys: list[Key], *, key: bool = False) -> tuple[int | None, int | None]:
    pos = index.key_position(keys, nearest=True) if key else index.value_position(keys, nearest=True)
    return pos if pos is not None else (None, None)


def _issue(index: PositionIndex, keys: list[Key], code: str, message: str, *, key: bool = False,
           value: Any = None, allowed: Any = None, suggestion: str | None = None) -> RecipeIssue:
    line, column = _at(index, keys, key=key)
    if isinstance(allowed, list):
        allowed = tuple(allowed)
    return RecipeIssue(code, line, column, format_path(keys), message, value, allowed, suggestion)


def _map_error(error: ValidationError, index: PositionIndex) -> list[RecipeIssue]:
    keys: list[Key] = list(error.absolute_path)
    kind, value, schema = error.validator, error.instance, error.schema
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extras = [k for k in value if k not in schema.get("properties", {})]
        return [
            _issue(index, keys + [k], codes.UNKNOWN_KEY, f"unknown key {k!r}", key=True, value=k,
                   allowed=allowed, suggestion=did_you_mean(k, allowed))
            for k in extras
        ]
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return [_missing(index, keys, k, schema) for k in missing]
    if kind == "oneOf" and _discriminants(error.validator_value):
        return _tagged_union_issues(error, index, keys)
    if kind == "anyOf" and _is_mixture_or_default(error.validator_value):
        return [_issue(index, keys, codes.NO_MIXTURE_OR_DEFAULT,
                       "quantization needs 'mixture' or 'default' (neither is given)",
                       value=None, allowed=["mixture", "default"])]
    if keys == ["version"]:
        message = (f"version must be the integer 1, not the {describe_type(value)} {value!r}"
                   if not isinstance(value, int) or isinstance(value, bool)
                   else f"unsupported recipe version {value!r} (this aqrecipe reads version 1)")
        return [_issue(index, keys, codes.BAD_VERSION, message, value=value, allowed=[1])]
    if kind == "type":
        return [_type_issue(index, keys, value, error.validator_value)]
    if kind == "enum":
        return [_enum_issue(index, keys, value, list(error.validator_value))]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                "minItems", "maxItems"):
        return [_range_issue(index, keys, kind, value, schema)]
    return [_issue(index, keys, codes.NOT_ALLOWED, f"value {value!r} is not allowed: {error.message}",
                   value=value)]


def _discriminants(branches: Any) -> list[str]:
    """The ``type`` constants of a tagged union (every branch fixes ``type``), else []."""
    if not isinstance(branches, list):
        return []
    tags = [b.get("properties", {}).get("type", {}).get("const") for b in branches if isinstance(b, dict)]
    return tags if tags and all(isinstance(t, str) for t in tags) else []


def _tagged_union_issues(error: ValidationError, index: PositionIndex, keys: list[Key]) -> list[RecipeIssue]:
    """Errors of a ``type:``-tagged node: a missing/unknown tag, or the chosen branch's own errors."""
    tags = _discriminants(error.validator_value)
    value = error.instance
    if not isinstance(value, dict):
        return [_type_issue(index, keys, value, "object")]
    tag = value.get("type")
    if tag not in tags:
        if "type" not in value:
            return [_issue(index, keys, codes.MISSING_KEY, f"missing 'type' (one of {', '.join(tags)})",
                           value=None, allowed=tags)]
        return [_issue(index, keys + ["type"], codes.NOT_ALLOWED, f"unknown type {tag!r}", value=tag,
                       allowed=tags, suggestion=did_you_mean(str(tag), tags))]
    branch = tags.index(tag)
    found: list[RecipeIssue] = []
    for sub in error.context or ():
        if sub.schema_path and sub.schema_path[0] == branch:
            found.extend(_map_error(sub, index))
    return found


def _is_mixture_or_default(branches: Any) -> bool:
    return isinstance(branches, list) and {tuple(b.get("required", ())) for b in branches} == {
        ("mixture",), ("default",)}


def _missing(index: PositionIndex, keys: list[Key], name: str, schema: dict[str, Any]) -> RecipeIssue:
    if not keys and name == "version":
        return _issue(index, [name], codes.MISSING_VERSION,
                      "recipe has no 'version' key; add 'version: 1' as its first line", allowed=[1])
    hint = schema.get("properties", {}).get(name, {}).get("description", "").rstrip(".") or None
    return _issue(index, keys + [name], codes.MISSING_KEY, f"missing required key {name!r}", allowed=hint)


def _type_issue(index: PositionIndex, keys: list[Key], value: Any, expected: Any) -> RecipeIssue:
    if value is None and len(keys) >= 2 and keys[-2] == "rules" and isinstance(keys[-1], int):
        return _issue(index, keys, codes.EMPTY_RULE, "empty rules entry (a '-' with nothing after it)",
                      allowed="a mapping with 'match' and 'type'")
    wanted = [expected] if isinstance(expected, str) else list(expected)
    words = " or ".join(_JSON_TYPE_WORDS.get(w, w) for w in wanted)
    shown = f" {value!r}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    if isinstance(value, bool):
        shown = f" {str(value).lower()}"
    return _issue(index, keys, codes.WRONG_TYPE, f"wrong type: expected {words}, got {describe_type(value)}{shown}",
                  value=value, allowed=words)


def _enum_issue(index: PositionIndex, keys: list[Key], value: Any, allowed: list[Any]) -> RecipeIssue:
    if set(allowed) == set(type_names()):
        code, what = codes.UNKNOWN_TYPE, "unknown quantization type"
    elif set(allowed) == set(mixture_names()):
        code, what = codes.UNKNOWN_MIXTURE, "unknown mixture"
    else:
        code, what = codes.NOT_ALLOWED, "value not allowed:"
    return _issue(index, keys, code, f"{what} {value!r}", value=value, allowed=allowed,
                  suggestion=did_you_mean(value, allowed))


def _range_issue(index: PositionIndex, keys: list[Key], kind: str, value: Any,
                 schema: dict[str, Any]) -> RecipeIssue:
    if kind == "minLength" and value == "":
        if keys and keys[-1] == "match":
            return _issue(index, keys, codes.EMPTY_RULE, "empty match pattern ''", value=value,
                          allowed="an exact tensor name, 're:<regex>' or a glob")
        return _issue(index, keys, codes.OUT_OF_RANGE, "empty string ''", value=value, allowed="a non-empty string")
    low = schema.get("minimum", schema.get("minLength"))
    high = schema.get("maximum", schema.get("maxLength"))
    span = f"{'' if low is None else low}..{'' if high is None else high}"
    if kind in ("minimum", "exclusiveMinimum", "minLength", "minItems"):
        message = f"value {value!r} is below the minimum {schema[kind]}"
    else:
        message = f"value {value!r} is above the maximum {schema[kind]}"
    return _issue(index, keys, codes.OUT_OF_RANGE, message, value=value, allowed=span)


def _regex_issues(data: Any, index: PositionIndex) -> list[RecipeIssue]:
    """Compile every ``re:`` pattern with Python's ``re`` and report its error."""
    quant = data.get("quantization") if isinstance(data, dict) else None
    rules = quant.get("rules") if isinstance(quant, dict) else None
    if not isinstance(rules, list):
        return []
    found = []
    for i, rule in enumerate(rules):
        pattern = rule.get("match") if isinstance(rule, dict) else None
        if not isinstance(pattern, str) or not pattern.startswith(REGEX_PREFIX):
            continue
        keys: list[Key] = ["quantization", "rules", i, "match"]
        body = pattern[len(REGEX_PREFIX):]
        if not body:
            found.append(_issue(index, keys, codes.EMPTY_RULE, "empty regular expression after 're:'",
                                value=pattern, allowed="'re:' followed by a Python regular expression"))
            continue
        try:
            re.compile(body)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            found.append(_issue(index, keys, codes.BAD_REGEX,
                                f"invalid regular expression {body!r}: {exc.msg}{where}",
                                value=pattern, allowed="a Python regular expression (module re)"))
    return found

