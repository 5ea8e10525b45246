"""Per-tensor rules: which recipe rule (or CLI ``--set``) chooses a tensor's type.

Precedence follows the design card: an exact-name rule beats any ``re:``
regex rule, which beats any glob rule, which beats any role rule; within one
kind the first listed rule wins. A pattern is tried against the llama.cpp (GGUF) name and the Hugging
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

Regexes: every ``re:`` pattern (recipe rules, ``--set``, validation) is compiled
by :func:`aqrecipe.recipe.patterns.compile_rule_regex` and matched by RE2 (the ``google-re2`` package), an
engine whose time is linear in the name: a pattern such as ``^([a-z_.0-9]+)+!$``,
which makes Python's backtracking ``re`` take exponential time, cannot hang a
command. What rules are written with (classes, groups, alternation, anchors,
repetition, ``(?i)``, ``\\Z``) means what it means in Python's ``re``; ``\\d \\w \\s
\\b`` are ASCII, as tensor names are. A pattern Python's ``re`` rejects is
invalid (R109); one RE2 cannot run (backreferences, lookaround, atomic groups,
possessive quantifiers, repetition counts above 1000, a compiled program over
:data:`REGEX_MEMORY` bytes) is refused naming the rule (R114).

Roles: ``role: experts`` in a recipe rule (``role:experts`` in ``--set``) names tensors by what
they do instead of by name: a group of :data:`aqrecipe.models.tensor_names.ROLE_GROUPS` (routed
experts, shared experts, routers, attention, dense feed-forward, embeddings, output) or one GGUF
role (``ffn_down_exps``). Role rules are the broadest kind and come after globs.

Unused rules: a rule that chooses no tensor is reported with the reason
(:meth:`RuleSet.unused_reasons`): it matches nothing, it matches only tensors
that stay F32, it duplicates an earlier rule, or rules that come first already
take every tensor it matches.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from aqrecipe.errors import PlanError
from aqrecipe.models.tensor_names import answers_to_role
from aqrecipe.recipe.model import REGEX_PREFIX, ROLE_PREFIX, rule_kind
from aqrecipe.recipe.patterns import REGEX_MEMORY, RuleRegexError, compile_rule_regex
from aqrecipe.recipe.rounding import Rounding

# the matcher's home is recipe.patterns, the pattern kinds' recipe.model
__all__ = ["REGEX_MEMORY", "REGEX_PREFIX", "ROLE_PREFIX", "RuleRegexError", "compile_rule_regex", "rule_kind"]

_KIND_ORDER = {"exact": 0, "regex": 1, "glob": 2, "role": 3}
_KIND_NAME = {"exact": "an exact name", "regex": "a regex", "glob": "a glob", "role": "a role"}
_KIND_PLURAL = {"exact": "exact names", "regex": "regexes", "glob": "globs", "role": "roles"}

#: The output head's names (GGUF, Hugging Face); a tied token_embd answers to them too.
OUTPUT_NAMES = ("output.weight", "lm_head.weight")


@dataclass(frozen=True)
class Rule:
    """One rule: a pattern of some kind and the type it assigns."""

    pattern: str  # as written, with the "re:" prefix for regexes
    type: str
    kind: str  # "exact" | "regex" | "glob" | "role"
    origin: str  # "recipe rules[3]" or "--set" : shown in the plan
    rounding: Rounding | None = None  # the rule's own rounding; None: the spec's

    def matches(self, *names: str) -> bool:
        """Whether any of ``names`` matches (regexes: a search, as llama.cpp's ``--tensor-type``)."""
        if self.kind == "exact":
            return self.pattern in names
        if self.kind == "regex":
            body = self.pattern[len(REGEX_PREFIX):] if self.pattern.startswith(REGEX_PREFIX) else self.pattern
            regex = compile_rule_regex(body, f"{self.origin} {self.pattern!r}")
            return any(regex.search(n) is not None for n in names)
        if self.kind == "role":  # GGUF names (and a tied token_embd's output alias) carry the role
            role = self.pattern.removeprefix(ROLE_PREFIX)
            return any(answers_to_role(n, role) for n in names)
        return any(fnmatch.fnmatchcase(n, self.pattern) for n in names)


def output_aliases(gguf_name: str, *, has_output: bool) -> tuple[str, ...]:
    """The extra names a tensor answers to: the output's, for a tied ``token_embd.weight``."""
    return OUTPUT_NAMES if gguf_name == "token_embd.weight" and not has_output else ()


def _source(rule: Rule) -> str:
    """Where a rule comes from: "rules" (the recipe), "--set", "planner", ..."""
    return rule.origin.split("[", 1)[0]


class RuleSet:
    """Rules in precedence order; remembers which ones matched something, and why others did not."""

    def __init__(self, rules: list[Rule]) -> None:
        # stable sort keeps list order within a kind
        self._rules = sorted(enumerate(rules), key=lambda ir: _KIND_ORDER[ir[1].kind])
        self._rank = {i: rank for rank, (i, _) in enumerate(self._rules)}
        self._used: set[int] = set()
        self._all = list(rules)
        self._seen: list[tuple[tuple[str, ...], int]] = []  # names of each tensor a rule chose, its rule
        self._kept: list[tuple[str, str]] = []  # tensors rules do not apply to (1-D, norms)

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
        self._seen.append(((*names, *aliases), found[0]))
        return found[1]

    def keep(self, gguf_name: str, hf_name: str) -> None:
        """Note a tensor no rule applies to (it stays F32), so an unused rule that names it says so."""
        self._kept.append((gguf_name, hf_name))

    def unused(self) -> list[Rule]:
        """Rules that matched no tensor, in the order they were written."""
        return [r for i, r in enumerate(self._all) if i not in self._used]

    def unused_reasons(self) -> list[tuple[Rule, str | None]]:
        """Each unused rule with why it chose nothing: None when it matches no tensor at all, else
        "matches only tensors that stay F32 ...", "duplicate of ..." or "never reached: ..."."""
        return [(r, self._reason(i, r)) for i, r in enumerate(self._all) if i not in self._used]

    def _reason(self, index: int, rule: Rule) -> str | None:
        earlier = [(i, r) for i, r in self._rules if self._rank[i] < self._rank[index]]
        twin = next(((i, r) for i, r in earlier if r.pattern == rule.pattern and r.kind == rule.kind), None)
        if twin is not None:
            return f"duplicate of {twin[1].origin} {twin[1].pattern!r}, which comes first"
        winners = sorted({w for names, w in self._seen if rule.matches(*names)}, key=self._rank.__getitem__)
        if winners:
            named = " and ".join(f"{self._all[w].origin} {self._all[w].pattern!r}{_precedence(w, index, self._all)}"
                                 for w in winners[:3])
            if len(winners) > 3:
                named += f" and {len(winners) - 3} more"
            verb = "matches" if len(winners) == 1 else "match"
            return f"never reached: {named} already {verb} every tensor it matches"
        kept = [g for g, h in self._kept if rule.matches(g, h)]
        if kept:
            return (f"matches only tensors that stay F32 (1-D weights and norms are not quantized), "
                    f"e.g. {kept[0]}")
        return None


def _precedence(winner: int, loser: int, rules: Sequence[Rule]) -> str:
    """Why ``rules[winner]`` comes before ``rules[loser]``: a kind that takes precedence, listed
    above it, or (listed below, same kind) the output's rule on a tied token_embd (module doc)."""
    w, r = rules[winner], rules[loser]
    if w.kind != r.kind:
        return f" ({_KIND_NAME[w.kind]}, which takes precedence over {_KIND_PLURAL[r.kind]})"
    if winner < loser:
        return " above"
    return " (the output's rule, which wins on the tied token_embd.weight)"


#: What :func:`unused_entry` records for a rule that matches no tensor at all.
NO_MATCH = "matches no tensor"


def unused_entry(rule: Rule, reason: str | None) -> str:
    """The plan's line for an unused rule: ``rules[2] 'p' -> Q8_0``, then ``: REASON`` unless it matches
    nothing (so plans whose rules all match something, or nothing, keep their bytes and hashes)."""
    head = f"{rule.origin} {rule.pattern!r} -> {rule.type}"
    return head if reason is None else f"{head}: {reason}"


def split_unused_entry(entry: str) -> tuple[str, str]:
    """``(head, reason)`` of an :func:`unused_entry` line; the reason is :data:`NO_MATCH` when none is given.

    The pattern is a Python string literal: it is read to its closing quote, so
    a pattern holding ``': '`` or ``' -> '`` does not confuse the split.
    """
    start = entry.find(" ") + 1
    quote = entry[start:start + 1]
    if quote not in ("'", '"'):
        return entry, NO_MATCH
    i = start + 1
    while i < len(entry) and entry[i] != quote:
        i += 2 if entry[i] == "\\" else 1
    type_end = entry.find(": ", i + 1)
    if type_end < 0:
        return entry, NO_MATCH
    return entry[:type_end], entry[type_end + 2:]


def rule_reason(rule: Rule, gguf_name: str, hf_name: str) -> str:
    """The plan's "which rule chose it" text; says so when the rule reached a tied output."""
    text = f"{rule.origin} {rule.pattern!r}"
    if not rule.matches(gguf_name, hf_name):
        text += f" (tied embeddings: {gguf_name} is the output tensor)"
    return text


def parse_set_option(text: str) -> Rule:
    """Parse a CLI ``--set PATTERN=TYPE`` into a rule (the type is checked later, a regex at once)."""
    pattern, sep, type_name = text.rpartition("=")
    if not sep or not pattern or not type_name:
        raise PlanError(
            f"--set expects PATTERN=TYPE, got {text!r}",
            hint="for example --set 'blk.*.ffn_down.weight=Q6_K'",
        )
    kind = rule_kind(pattern)
    if kind == "regex":
        compile_rule_regex(pattern[len(REGEX_PREFIX):], f"--set {pattern!r}")
    return Rule(pattern=pattern, type=type_name.strip().upper(), kind=kind, origin="--set")
