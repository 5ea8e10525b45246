"""Recipe data -> list of RecipeIssue: every JSON Schema error mapped to a stable code,
plus the semantic checks a schema cannot express (finite numbers, regular expressions).

Nothing here stops at the first problem. Messages show values through
:func:`~aqrecipe.recipe.excerpt.short_repr`, and the schema validator sees a
:func:`~aqrecipe.recipe.excerpt.bounded_view` of the data, so no value, however
large, is printed whole.
"""

from __future__ import annotations

import math
from typing import Any

from jsonschema.exceptions import ValidationError

from aqrecipe.recipe import issues as codes
from aqrecipe.recipe.excerpt import bounded_view, short_repr
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
    found = _with_finite_numbers(data, index, validator().iter_errors(bounded_view(data)))
    found.extend(_regex_issues(data, index))
    found.extend(_rule_target_issues(data, index))
    return found


def collect_section_issues(name: str, data: Any) -> list[RecipeIssue]:
    """The schema issues of one stage section on its own (paths such as ``$.smoothquant.alpha``)."""
    wrapped = {name: data}
    return _with_finite_numbers(wrapped, PositionIndex(None), section_validator(name).iter_errors(bounded_view(wrapped)))


def _with_finite_numbers(data: Any, index: PositionIndex, errors: Any) -> list[RecipeIssue]:
    """R113 for every NaN or infinity in ``data``, then the schema's issues elsewhere.

    NaN compares false with every bound, so a schema lets it through any range; an
    infinity fails a bound but deserves its own message. The schema's issues at the
    same paths (say "inf is above the maximum") say the same thing again: dropped.
    """
    bad = non_finite_issues(data, index)
    paths = {i.json_path for i in bad}
    schema = [i for error in errors for i in _map_error(error, index)]
    return bad + [i for i in schema if i.json_path not in paths]


def non_finite_issues(data: Any, index: PositionIndex | None = None) -> list[RecipeIssue]:
    """One R113 issue per NaN or infinite float anywhere in ``data``, with its JSON path and position."""
    index = index or PositionIndex(None)
    found: list[RecipeIssue] = []
    pending: list[tuple[Any, list[Key]]] = [(data, [])]  # no recursion: data may nest deeply
    while pending:
        value, keys = pending.pop()
        if isinstance(value, dict):
            pending.extend((v, keys + [k]) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            pending.extend((v, keys + [i]) for i, v in reversed(list(enumerate(value))))
        elif isinstance(value, float) and not math.isfinite(value):
            what = "NaN (not a number)" if math.isnan(value) else f"{'-' if value < 0 else ''}infinity"
            found.append(_issue(index, keys, codes.NOT_FINITE,
                                f"number {value!r} is not finite: {what} is never a valid setting",
                                value=value, allowed="a finite number in the range the key documents"))
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
            _issue(index, keys + [k], codes.UNKNOWN_KEY, f"unknown key {short_repr(k)}", key=True, value=k,
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
        message = (f"version must be the integer 1, not the {describe_type(value)} {short_repr(value)}"
                   if not isinstance(value, int) or isinstance(value, bool)
                   else f"unsupported recipe version {short_repr(value)} (this aqrecipe reads version 1)")
        return [_issue(index, keys, codes.BAD_VERSION, message, value=value, allowed=[1])]
    if kind == "type":
        return [_type_issue(index, keys, value, error.validator_value)]
    if kind == "enum":
        return [_enum_issue(index, keys, value, list(error.validator_value))]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                "minItems", "maxItems"):
        return [_range_issue(index, keys, kind, value, schema)]
    # our own words: jsonschema's error.message embeds the whole instance
    return [_issue(index, keys, codes.NOT_ALLOWED,
                   f"value {short_repr(value)} is not allowed (schema keyword {kind!r}: "
                   f"{short_repr(error.validator_value, 80)})", value=value)]


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
        return [_issue(index, keys + ["type"], codes.NOT_ALLOWED, f"unknown type {short_repr(tag)}", value=tag,
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
    return _issue(index, keys + [name], codes.MISSING_KEY, f"missing required key {short_repr(name)}", allowed=hint)


def _type_issue(index: PositionIndex, keys: list[Key], value: Any, expected: Any) -> RecipeIssue:
    if value is None and len(keys) >= 2 and keys[-2] == "rules" and isinstance(keys[-1], int):
        return _issue(index, keys, codes.EMPTY_RULE, "empty rules entry (a '-' with nothing after it)",
                      allowed="a mapping with 'match' and 'type'")
    wanted = [expected] if isinstance(expected, str) else list(expected)
    words = " or ".join(_JSON_TYPE_WORDS.get(w, w) for w in wanted)
    shown = f" {short_repr(value)}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
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
    return _issue(index, keys, code, f"{what} {short_repr(value)}", value=value, allowed=allowed,
                  suggestion=did_you_mean(value, allowed))


def _range_issue(index: PositionIndex, keys: list[Key], kind: str, value: Any,
                 schema: dict[str, Any]) -> RecipeIssue:
    if kind == "minLength" and value == "":
        if keys and keys[-1] == "match":
            return _issue(index, keys, codes.EMPTY_RULE, "empty match pattern ''", value=value,
                          allowed="an exact tensor name, 're:<regex>' or a glob")
        return _issue(index, keys, codes.OUT_OF_RANGE, "empty string ''", value=value, allowed="a non-empty string")
    span = allowed_range(schema)
    shown = short_repr(value)
    if not any(k in schema for k in ("exclusiveMinimum", "exclusiveMaximum")):  # "16..32768", as before
        low, high = schema.get("minimum", schema.get("minLength")), schema.get("maximum", schema.get("maxLength"))
        allowed = f"{'' if low is None else low}..{'' if high is None else high}"
    else:
        allowed = span
    if kind in ("minLength", "minItems", "maxLength", "maxItems"):
        what = "characters" if kind.endswith("Length") else "items"
        side = "at least" if kind.startswith("min") else "at most"
        message = f"value {shown} is too {'short' if kind.startswith('min') else 'long'}: {side} {schema[kind]} {what}"
    else:
        message = f"value {shown} is out of range: it must be {span}"
    return _issue(index, keys, codes.OUT_OF_RANGE, message, value=value, allowed=allowed)


def allowed_range(schema: dict[str, Any]) -> str:
    """A number's range in words: ``> 0 and <= 32``, ``from 1 to 10000``, ``>= 0``."""
    low = ("> ", schema["exclusiveMinimum"]) if "exclusiveMinimum" in schema else (
        (">= ", schema["minimum"]) if "minimum" in schema else None)
    high = ("< ", schema["exclusiveMaximum"]) if "exclusiveMaximum" in schema else (
        ("<= ", schema["maximum"]) if "maximum" in schema else None)
    if low and high and low[0] == ">= " and high[0] == "<= ":
        return f"from {low[1]} to {high[1]}"
    parts = [f"{side[0]}{side[1]}" for side in (low, high) if side]
    return " and ".join(parts) if parts else "any value"


def _rule_target_issues(data: Any, index: PositionIndex) -> list[RecipeIssue]:
    """Each rule names its tensors one way: ``match`` (a name, glob or ``re:``) or ``role``, not both."""
    quant = data.get("quantization") if isinstance(data, dict) else None
    rules = quant.get("rules") if isinstance(quant, dict) else None
    found = []
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict) or not rule:
            continue
        keys: list[Key] = ["quantization", "rules", i]
        if "match" in rule and "role" in rule:
            found.append(_issue(index, keys + ["role"], codes.NOT_ALLOWED, "a rule has either 'match' or 'role', not both",
                                allowed="one rule per way of naming tensors"))
        elif "match" not in rule and "role" not in rule:
            from aqrecipe.models.tensor_names import ROLE_GROUPS  # only for the message: models/ is heavy to import

            found.append(_issue(index, keys, codes.MISSING_KEY, "missing 'match' or 'role'",
                                allowed="match: an exact tensor name, 're:<regex>' or a glob; or role: "
                                f"{', '.join(ROLE_GROUPS)} or a GGUF role such as ffn_down_exps"))
    return found


def _regex_issues(data: Any, index: PositionIndex) -> list[RecipeIssue]:
    """Compile every ``re:`` pattern with the rules' matcher and report why it cannot be used."""
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
        from aqrecipe.recipe.patterns import RuleRegexError, compile_rule_regex

        try:
            compile_rule_regex(body)
        except RuleRegexError as exc:
            if exc.unsupported:
                found.append(_issue(index, keys, codes.REGEX_UNSUPPORTED,
                                    f"regular expression {short_repr(body)} cannot be matched in linear time: "
                                    f"{exc.reason}", value=pattern, allowed=exc.hint))
            else:
                where = f" at position {exc.position}" if exc.position is not None else ""
                found.append(_issue(index, keys, codes.BAD_REGEX,
                                    f"invalid regular expression {short_repr(body)}: {exc.reason}{where}",
                                    value=pattern, allowed="a Python regular expression (module re)"))
    return found

