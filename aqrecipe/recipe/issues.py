"""One recipe problem (:class:`RecipeIssue`), the stable codes, and the error that carries them.

Codes (also in docs/recipe-errors.md; never renumber, only add):

====== ==========================================================================
code   meaning
====== ==========================================================================
R001   recipe file not found
R002   recipe file cannot be read (permission, is a directory, I/O error)
R003   recipe file is not valid UTF-8
R010   YAML syntax error (position from the parser)
R011   tab character used for indentation
R012   duplicate key in a mapping
R013   YAML feature not allowed in a recipe (custom tag, non-string key, recursive alias)
R014   YAML aliases or merge keys expand beyond the limit (an alias bomb)
R020   recipe is empty
R021   recipe is not a mapping at the top level
R101   unknown key (the allowed siblings are listed)
R102   missing required key
R103   wrong type (e.g. a string where an integer is expected)
R104   value out of range (minimum / maximum / length)
R105   unknown quantization type name
R106   unknown llama.cpp mixture name
R107   unsupported recipe version (must be 1)
R108   missing ``version`` key
R109   invalid regular expression in a ``re:`` rule
R110   empty rules entry or empty match pattern
R111   quantization has neither ``mixture`` nor ``default``
R112   value not allowed (other enumerations, other schema violations)
R113   number is not finite (NaN or infinity)
R114   regular expression not supported by the linear-time matcher (backreference, lookaround, ...)
R201   rule matches no tensor of the model (model-aware; raised by the compiler)
R202   model not found (model-aware; raised by the compiler)
R203   imatrix file not found (``validate``; aqrecipe/preflight.py)
R204   calibration text or JSON-lines file not found (``validate``; aqrecipe/preflight.py)
R205   evaluation text file not found (``validate``; aqrecipe/preflight.py)
====== ==========================================================================
"""

from __future__ import annotations

import datetime
import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aqrecipe.errors import RecipeError
from aqrecipe.recipe.excerpt import json_excerpt

FILE_NOT_FOUND = "R001"
FILE_UNREADABLE = "R002"
NOT_UTF8 = "R003"
YAML_SYNTAX = "R010"
TAB_INDENT = "R011"
DUPLICATE_KEY = "R012"
YAML_UNSUPPORTED = "R013"
ALIAS_EXPANSION = "R014"
EMPTY = "R020"
NOT_MAPPING = "R021"
UNKNOWN_KEY = "R101"
MISSING_KEY = "R102"
WRONG_TYPE = "R103"
OUT_OF_RANGE = "R104"
UNKNOWN_TYPE = "R105"
UNKNOWN_MIXTURE = "R106"
BAD_VERSION = "R107"
MISSING_VERSION = "R108"
BAD_REGEX = "R109"
EMPTY_RULE = "R110"
NO_MIXTURE_OR_DEFAULT = "R111"
NOT_ALLOWED = "R112"
NOT_FINITE = "R113"
REGEX_UNSUPPORTED = "R114"
RULE_MATCHES_NOTHING = "R201"
MODEL_NOT_FOUND = "R202"
IMATRIX_FILE_NOT_FOUND = "R203"
CALIBRATION_FILE_NOT_FOUND = "R204"
EVALUATION_FILE_NOT_FOUND = "R205"

#: code -> one-line summary; docs/recipe-errors.md documents every entry.
CODES: dict[str, str] = {
    FILE_NOT_FOUND: "recipe file not found",
    FILE_UNREADABLE: "recipe file cannot be read",
    NOT_UTF8: "recipe file is not valid UTF-8",
    YAML_SYNTAX: "YAML syntax error",
    TAB_INDENT: "tab character used for indentation",
    DUPLICATE_KEY: "duplicate key",
    YAML_UNSUPPORTED: "YAML feature not allowed in a recipe",
    ALIAS_EXPANSION: "YAML aliases expand beyond the limit",
    EMPTY: "recipe is empty",
    NOT_MAPPING: "recipe is not a mapping",
    UNKNOWN_KEY: "unknown key",
    MISSING_KEY: "missing required key",
    WRONG_TYPE: "wrong type",
    OUT_OF_RANGE: "value out of range",
    UNKNOWN_TYPE: "unknown quantization type",
    UNKNOWN_MIXTURE: "unknown mixture",
    BAD_VERSION: "unsupported recipe version",
    MISSING_VERSION: "missing version",
    BAD_REGEX: "invalid regular expression",
    EMPTY_RULE: "empty rules entry or pattern",
    NO_MIXTURE_OR_DEFAULT: "quantization has neither mixture nor default",
    NOT_ALLOWED: "value not allowed",
    NOT_FINITE: "number is not finite",
    REGEX_UNSUPPORTED: "regular expression not supported by the matcher",
    RULE_MATCHES_NOTHING: "rule matches no tensor",
    MODEL_NOT_FOUND: "model not found",
    IMATRIX_FILE_NOT_FOUND: "imatrix file not found",
    CALIBRATION_FILE_NOT_FOUND: "calibration data file not found",
    EVALUATION_FILE_NOT_FOUND: "evaluation text file not found",
}


@dataclass(frozen=True)
class RecipeIssue:
    """One problem in a recipe, pointing at a YAML line:column (1-based; None when unknown)."""

    code: str
    line: int | None
    column: int | None
    json_path: str
    message: str
    value: Any = None
    allowed: tuple[Any, ...] | str | None = None
    suggestion: str | None = None  # "did you mean" for near-misses
    source: str | None = None  # file name used by format()

    def format(self, source: str | None = None) -> str:
        """``recipe.yaml:12:9: R105 unknown quantization type 'Q4_KM' at $... (allowed: ...)``."""
        where = source or self.source or "<recipe>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {self.code} {self.message} at {self.json_path}"
        if self.suggestion is not None:
            text += f"; did you mean {self.suggestion!r}?"
        if self.allowed is not None and self.allowed != ():
            shown = self.allowed if isinstance(self.allowed, str) else ", ".join(map(str, self.allowed))
            text += f" (allowed: {shown})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (for ``--json`` output)."""
        allowed = self.allowed if self.allowed is None or isinstance(self.allowed, str) else [
            json_safe(a) for a in self.allowed
        ]
        return {
            "code": self.code,
            "line": self.line,
            "column": self.column,
            "json_path": self.json_path,
            "message": self.message,
            "value": json_excerpt(self.value),
            "allowed": allowed,
            "suggestion": self.suggestion,
            "source": self.source,
        }


def json_safe(value: Any) -> Any:
    """``value`` if it is plain JSON data, else its ``str`` (dates, bytes, sets from YAML)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def did_you_mean(word: Any, choices: Iterable[Any]) -> str | None:
    """The closest string in ``choices`` to ``word`` (case-insensitive), or None."""
    if not isinstance(word, str):
        return None
    options = [str(c) for c in choices]
    by_upper = {o.upper(): o for o in options}
    found = difflib.get_close_matches(word.upper(), list(by_upper), n=1, cutoff=0.6)
    return by_upper[found[0]] if found else None


def sort_issues(issues: Iterable[RecipeIssue]) -> list[RecipeIssue]:
    """Order issues by position (unknown positions last), then path and code; stable."""
    return sorted(
        issues,
        key=lambda i: (i.line is None, i.line or 0, i.column or 0, i.json_path, i.code),
    )


def recipe_error(issues: Sequence[RecipeIssue], source: str | None = None) -> RecipeError:
    """A :class:`RecipeError` whose message lists every issue, one per line."""
    issues = list(issues)
    where = source or next((i.source for i in issues if i.source), None) or "recipe"
    noun = "problem" if len(issues) == 1 else "problems"
    lines = [f"{where}: {len(issues)} {noun} found"] + ["  " + i.format(source) for i in issues]
    return RecipeError(
        "\n".join(lines),
        issues=issues,
        hint="fix the positions listed above; docs/recipe-errors.md explains each code",
    )
