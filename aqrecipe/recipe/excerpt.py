"""How a recipe value appears in a message: a bounded excerpt, never the whole value.

A value in a recipe can be large (a long string, a list of thousands of items, what
YAML aliases expand to), and a message that printed it whole would cost time and
memory in proportion (issue 16: a 580-byte alias bomb under ``smoothquant.alpha``
ran 60 s and died of MemoryError building reprs). Everything here reads at most
about ``limit`` characters' worth of the value, however large it is.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

#: Characters of a value shown in a message (about; a cut value ends with "...").
VALUE_LIMIT = 200

#: Items of a list or mapping a JSON excerpt keeps before it becomes a string excerpt.
JSON_ITEMS = 64

_CUT = "..."


def short_repr(value: Any, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, built from a bounded part of the value."""
    text = _excerpt(value, limit + 1, depth=0)
    return text if len(text) <= limit else text[: max(0, limit - len(_CUT))] + _CUT


def _excerpt(value: Any, room: int, depth: int) -> str:
    """A repr of ``value`` that stops once ``room`` characters are used (may exceed it a little)."""
    if isinstance(value, dict):
        return _items(((k, v) for k, v in value.items()), "{", "}", room, depth, pairs=True)
    if isinstance(value, (list, tuple)):
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        return _items(iter(value), open_, close, room, depth, pairs=False)
    if isinstance(value, (str, bytes, bytearray)):
        shown = repr(value[:room])
        return shown if len(value) <= room else shown + _CUT
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<{type(value).__name__} of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"
    return text


def _items(items: Any, open_: str, close: str, room: int, depth: int, *, pairs: bool) -> str:
    if depth >= 4:
        return open_ + _CUT + close
    parts: list[str] = []
    used = len(open_)
    for item in items:
        if used >= room:
            parts.append(_CUT)
            break
        if pairs:
            key, val = item
            text = _excerpt(key, room - used, depth + 1) + ": " + _excerpt(val, room - used, depth + 1)
        else:
            text = _excerpt(item, room - used, depth + 1)
        parts.append(text)
        used += len(text) + 2
    return open_ + ", ".join(parts) + close


def json_excerpt(value: Any) -> Any:
    """``value`` as plain JSON data when it is small, else its :func:`short_repr` (a string).

    Dates, bytes, NaN, infinities and other YAML scalars become strings, as JSON cannot hold them.
    """
    budget = [JSON_ITEMS]
    try:
        return _json(value, budget)
    except _TooBig:
        return short_repr(value)


class _TooBig(Exception):
    pass


def _json(value: Any, budget: list[int]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN or Infinity
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= 4 * VALUE_LIMIT else short_repr(value)
    if isinstance(value, (list, tuple, dict)):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise _TooBig
        if isinstance(value, dict):
            return {str(k): _json(v, budget) for k, v in value.items()}
        return [_json(v, budget) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return short_repr(value) if isinstance(value, (bytes, bytearray)) else str(value)


class _ShortList(list):  # type: ignore[type-arg]
    """A list whose repr is an excerpt (see :func:`bounded_view`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return short_repr(self)


class _ShortDict(dict):  # type: ignore[type-arg]
    """A dict whose repr is an excerpt (see :func:`bounded_view`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return short_repr(self)


def bounded_view(data: Any) -> Any:
    """A copy of plain recipe data whose lists and mappings print as excerpts.

    jsonschema formats ``repr(instance)`` into every error's message as it creates
    the error, before anyone reads it; validating this view keeps each of those
    reprs short. The copy is shallow per container and shares what YAML aliases
    share, so it costs one pass over the data. Equality, ``isinstance`` and JSON
    serialisation behave as for the original.
    """
    if not isinstance(data, (list, dict)):
        return data
    memo: dict[int, Any] = {}
    pending: list[Any] = []  # originals whose copies still need their items (no recursion: any depth)
    root = _shadow(data, memo, pending)
    while pending:
        original = pending.pop()
        target = memo[id(original)]
        if isinstance(original, dict):
            for key, value in original.items():
                target[key] = _shadow(value, memo, pending)
        else:
            target.extend(_shadow(value, memo, pending) for value in original)
    return root


def _shadow(value: Any, memo: dict[int, Any], pending: list[Any]) -> Any:
    """The view of ``value``: itself for scalars, one (still empty) excerpt-printing copy per container."""
    if not isinstance(value, (list, dict)):
        return value
    copy = memo.get(id(value))
    if copy is None:
        copy = memo[id(value)] = _ShortDict() if isinstance(value, dict) else _ShortList()
        pending.append(value)
    return copy
