"""Per-tensor rules: which recipe rule (or CLI ``--set``) chooses a tensor's type.

Precedence follows the design card: an exact-name rule beats any ``re:``
regex rule, which beats any glob rule; within one kind the first listed rule
wins. A pattern is tried against the llama.cpp (GGUF) name and the Hugging
Face name of the tensor. Regexes use search semantics, like llama.cpp's
``--tensor-type``; anchor them with ``^``/``$`` to match whole names.

Tied embeddings: a model without ``output.weight`` uses ``token_embd.weight``
as its output head, and llama-quantize gives that tensor the output type. So
``token_embd.weight`` also answers to the output's names (``output.weight``,
``lm_head.weight``): a rule written for the output reaches it. When a rule
naming only the output and a rule naming token_embd both reach it, the output
rule wins if both are of the same kind and from the same source (the recipe,
``--set``, ...), as llama.cpp's output type beats its token-embedding type for
a tied tensor; exact > regex > glob and the order of sources still come first.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from aqrecipe.errors import PlanError

_KIND_ORDER = {"exact": 0, "regex": 1, "glob": 2}

#: The output head's names (GGUF, Hugging Face); a tied token_embd answers to them too.
OUTPUT_NAMES = ("output.weight", "lm_head.weight")


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


def output_aliases(gguf_name: str, *, has_output: bool) -> tuple[str, ...]:
    """The extra names a tensor answers to: the output's, for a tied ``token_embd.weight``."""
    return OUTPUT_NAMES if gguf_name == "token_embd.weight" and not has_output else ()


def _source(rule: Rule) -> str:
    """Where a rule comes from: "rules" (the recipe), "--set", "planner", ..."""
    return rule.origin.split("[", 1)[0]


class RuleSet:
    """Rules in precedence order; remembers which ones matched something."""

    def __init__(self, rules: list[Rule]) -> None:
        # stable sort keeps list order within a kind
        self._rules = sorted(enumerate(rules), key=lambda ir: _KIND_ORDER[ir[1].kind])
        self._used: set[int] = set()
        self._all = list(rules)

    def match(self, gguf_name: str, hf_name: str, *, aliases: tuple[str, ...] = ()) -> Rule | None:
        """The winning rule for a tensor, or None.

        ``aliases``: further names the tensor answers to (:func:`output_aliases`);
        a rule that reaches it only through them beats one of the same kind and
        source that names the tensor itself (the output type wins, module doc).
        """
        names = (gguf_name, hf_name)
        found = next(((i, r) for i, r in self._rules if r.matches(*names, *aliases)), None)
        if found is not None and aliases and found[1].matches(*names):
            kind, source = found[1].kind, _source(found[1])
            found = next(((i, r) for i, r in self._rules if r.kind == kind and _source(r) == source
                          and r.matches(*aliases) and not r.matches(*names)), found)
        if found is None:
            return None
        self._used.add(found[0])
        return found[1]

    def unused(self) -> list[Rule]:
        """Rules that matched no tensor, in the order they were written."""
        return [r for i, r in enumerate(self._all) if i not in self._used]


def rule_reason(rule: Rule, gguf_name: str, hf_name: str) -> str:
    """The plan's "which rule chose it" text; says so when the rule reached a tied output."""
    text = f"{rule.origin} {rule.pattern!r}"
    if not rule.matches(gguf_name, hf_name):
        text += f" (tied embeddings: {gguf_name} is the output tensor)"
    return text


def parse_set_option(text: str) -> Rule:
    """Parse a CLI ``--set PATTERN=TYPE`` into a rule (the type is checked later)."""
    pattern, sep, type_name = text.rpartition("=")
    if not sep or not pattern or not type_name:
        raise PlanError(
            f"--set expects PATTERN=TYPE, got {text!r}",
            hint="for example --set 'blk.*.ffn_down.weight=Q6_K'",
        )
    return Rule(pattern=pattern, type=type_name.strip().upper(), kind=rule_kind(pattern), origin="--set")
