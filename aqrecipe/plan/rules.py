"""Per-tensor rules: which recipe rule (or CLI ``--set``) chooses a tensor's type.

Precedence follows the design card: an exact-name rule beats any ``re:``
regex rule, which beats any glob rule; within one kind the first listed rule
wins. A pattern is tried against the llama.cpp (GGUF) name and the Hugging
Face name of the tensor. Regexes use search semantics, like llama.cpp's
``--tensor-type``; anchor them with ``^``/``$`` to match whole names.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from ..errors import PlanError

_KIND_ORDER = {"exact": 0, "regex": 1, "glob": 2}


@dataclass(frozen=True)
class Rule:
    """One rule: a pattern of some kind and the type it assigns."""

    pattern: str  # as written, with the "re:" prefix for regexes
    type: str
    kind: str  # "exact" | "regex" | "glob"
    origin: str  # "recipe rules[3]" or "--set" : shown in the plan

    def matches(self, *names: str) -> bool:
        if self.kind == "exact":
            return self.pattern in names
        if self.kind == "regex":
            regex = re.compile(self.pattern[3:] if self.pattern.startswith("re:") else self.pattern)
            return any(regex.search(n) for n in names)
        return any(fnmatch.fnmatchcase(n, self.pattern) for n in names)


def rule_kind(pattern: str) -> str:
    """Classify a pattern: ``re:`` prefix is a regex, ``*?[`` make a glob, else exact."""
    if pattern.startswith("re:"):
        return "regex"
    if any(c in pattern for c in "*?["):
        return "glob"
    return "exact"


class RuleSet:
    """Rules in precedence order; remembers which ones matched something."""

    def __init__(self, rules: list[Rule]) -> None:
        # stable sort keeps list order within a kind
        self._rules = sorted(rules, key=lambda r: _KIND_ORDER[r.kind])
        self._used: set[int] = set()
        self._all = list(rules)

    def match(self, gguf_name: str, hf_name: str) -> Rule | None:
        """The winning rule for a tensor, or None."""
        for rule in self._rules:
            if rule.matches(gguf_name, hf_name):
                self._used.add(self._all.index(rule))
                return rule
        return None

    def unused(self) -> list[Rule]:
        """Rules that matched no tensor, in the order they were written."""
        return [r for i, r in enumerate(self._all) if i not in self._used]


def parse_set_option(text: str) -> Rule:
    """Parse a CLI ``--set PATTERN=TYPE`` into a rule (the type is checked later)."""
    pattern, sep, type_name = text.rpartition("=")
    if not sep or not pattern or not type_name:
        raise PlanError(
            f"--set expects PATTERN=TYPE, got {text!r}",
            hint="for example --set 'blk.*.ffn_down.weight=Q6_K'",
        )
    return Rule(pattern=pattern, type=type_name.strip().upper(), kind=rule_kind(pattern), origin="--set")
