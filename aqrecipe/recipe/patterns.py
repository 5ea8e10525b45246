"""The one matcher of ``re:`` rule patterns: Python's regex syntax, RE2's linear-time matching.

Recipe validation, the plan compiler, ``--set`` and ``TensorRule.regex`` all compile patterns here
(see :mod:`aqrecipe.plan.rules` for what rules mean). It lives in the recipe layer because
validating a recipe needs it and the plan layer sits above.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import re2

from aqrecipe.errors import PlanError

#: Bytes RE2 may use for one compiled pattern; a larger program is refused (R114), not built.
REGEX_MEMORY = 8 << 20


class RuleRegexError(PlanError):
    """A ``re:`` pattern that is not a valid Python regex, or that the linear-time matcher cannot run.

    ``unsupported`` tells the two apart (R114 vs R109); ``reason`` is the engine's
    own words and ``position`` the offset Python's ``re`` gives, when it gives one.
    """

    def __init__(self, message: str, *, hint: str, reason: str, unsupported: bool,
                 position: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.unsupported = unsupported
        self.position = position


class _Refused(Exception):
    def __init__(self, reason: str, *, unsupported: bool, position: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.unsupported, self.position = reason, unsupported, position


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is our error message, not a line on stderr
    options.max_mem = REGEX_MEMORY
    return options


_OPTIONS = _re2_options()


def _re2_syntax(body: str) -> str:
    """Python-only spellings RE2 reads differently: ``\\Z`` (end of text) is RE2's ``\\z``.

    Escapes are read in pairs, so ``\\\\Z`` (a backslash, then Z) stays as it is.
    """
    out, i = [], 0
    while i < len(body):
        pair = body[i:i + 2]
        if body[i] == "\\":
            out.append("\\z" if pair == "\\Z" else pair)
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _compiled(body: str) -> Any:
    """The RE2 program of ``body`` (cached: rules are matched against every tensor name)."""
    try:
        re.compile(body)  # the user's syntax is Python's: its own errors come first, with a position
    except re.error as exc:
        raise _Refused(exc.msg, unsupported=False, position=exc.pos) from None
    except (RecursionError, OverflowError, ValueError) as exc:  # nesting too deep, counts too large
        raise _Refused(str(exc) or type(exc).__name__, unsupported=False) from None
    try:
        return re2.compile(_re2_syntax(body), _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        raise _Refused(reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason),
                       unsupported=True) from None


def compile_rule_regex(body: str, rule: str = "rule") -> Any:
    """The linear-time matcher of a ``re:`` pattern (``body``: without the prefix).

    The result has ``search(name)`` and ``fullmatch(name)`` (None when there is no
    match), as a compiled ``re`` pattern. ``rule`` names the rule in the error.

    Raises:
        RuleRegexError: ``body`` is not a Python regex, or RE2 cannot run it.
    """
    try:
        return _compiled(body)
    except _Refused as refused:
        if refused.unsupported:
            raise RuleRegexError(
                f"{rule}: the regular expression {body!r} cannot be matched in linear time ({refused.reason})",
                hint="rules are matched by RE2, which has no backreferences, lookaround ((?=, (?!, (?<=), "
                     "atomic groups or possessive quantifiers and repeats at most 1000 times; rewrite the "
                     "pattern without them (an alternation or a glob usually does it)",
                reason=refused.reason, unsupported=True) from None
        where = f" at position {refused.position}" if refused.position is not None else ""
        raise RuleRegexError(f"{rule}: invalid regular expression {body!r}: {refused.reason}{where}",
                             hint="write a Python regular expression after 're:'", reason=refused.reason,
                             unsupported=False, position=refused.position) from None
