"""The one rule matcher (issue 16): linear-time regexes with Python's meaning, and why a rule chose nothing.

``compile_rule_regex`` is what recipe validation, the compiler, ``--set`` and
``TensorRule.regex`` use; the RuleSet says why each unused rule chose no tensor.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqrecipe.errors import PlanError
from aqrecipe.plan import PlanSpec, Rule, compile_plan, parse_set_option, render_plan
from aqrecipe.plan.rules import (
    NO_MATCH,
    RuleRegexError,
    RuleSet,
    compile_rule_regex,
    split_unused_entry,
    unused_entry,
)
from test_plan import FakeSource

CATASTROPHIC = "^([a-z_.0-9]+)+!$"  # exponential in a backtracking engine on a name without '!'


def test_catastrophic_pattern_is_matched_at_once() -> None:
    """Run in a child with a generous limit: Python's re would need ~2**100 steps for this name."""
    code = ("from aqrecipe.plan.rules import compile_rule_regex as c\n"
            f"print(c({CATASTROPHIC!r}).search('blk.10.ffn_down.weight' * 5))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr


@pytest.mark.parametrize("pattern, names", [
    (r"^blk\.(0|1|2|5|8|11|14|17|20|23|26|27|28|29)\.(attn_v|ffn_down)\.weight$",
     ["blk.0.attn_v.weight", "blk.3.attn_v.weight", "blk.29.ffn_down.weight", "blk.290.ffn_down.weight"]),
    (r"^blk\.\d+\.attn_(q|k|output)\.weight$", ["blk.7.attn_q.weight", "blk.7.attn_v.weight"]),
    (r"blk\.([0-3])\.attn_v\.weight", ["xblk.3.attn_v.weight", "blk.4.attn_v.weight"]),
    (r"^(token_embd|output)\.weight$", ["output.weight", "output.weight.x", "token_embd.weight"]),
    (r"(?i)^BLK\.1\.", ["blk.1.x", "blk.11.x"]),
    (r"^blk\.1\.ffn_down\Z", ["blk.1.ffn_down", "blk.1.ffn_down.weight"]),
    (r"model\.layers\.[0-9]{1,2}\.mlp", ["model.layers.12.mlp.up_proj.weight", "model.layers.123.mlp"]),
    (r"\bffn\b", ["blk.0.ffn.x", "blk.0.ffn_down"]),
    (r"^(?P<kind>attn|ffn)_", ["attn_q", "xattn_q"]),
])
def test_shipped_and_common_patterns_mean_what_python_re_says(pattern: str, names: list[str]) -> None:
    ours = compile_rule_regex(pattern)
    for name in names:
        assert (ours.search(name) is not None) == (re.search(pattern, name) is not None), (pattern, name)
        assert (ours.fullmatch(name) is not None) == (re.fullmatch(pattern, name) is not None), (pattern, name)


_ATOMS = st.sampled_from([r"blk", r"\.", r"\d", r"\d+", r"[0-9]", r"[a-z_]+", r"\w", r"attn_(q|k|v)", r"ffn_",
                          r".", r".*", r"weight", r"(0|1|12)", r"x?", r"[^.]+", r"^", r"$", r"\Z", r"\b"])
_NAMES = st.from_regex(r"(blk\.[0-9]{1,2}\.(attn_[qkv]|ffn_(up|down|gate))\.weight|output\.weight|"
                       r"model\.layers\.[0-9]\.mlp\.down_proj\.weight|[a-z0-9_.]{0,12})", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ATOMS, min_size=1, max_size=6).map("".join), st.lists(_NAMES, min_size=1, max_size=5))
def test_generated_patterns_agree_with_python_re(pattern: str, names: list[str]) -> None:
    ours = compile_rule_regex(pattern)
    for name in names:
        assert (ours.search(name) is not None) == (re.search(pattern, name) is not None), (pattern, name)


@pytest.mark.parametrize("pattern, words", [
    (r"(blk)\.\1", "\\1"),
    (r"^blk(?=\.0)", "(?="),
    (r"(?<=blk)\.0", "(?<="),
    (r"(?>blk)", "(?>"),
    (r"blk\.\d*+", "*+"),
    (r"a{1001}", "{1001}"),
    (r"(?x) blk \. 0", "(?x"),
])
def test_patterns_the_engine_cannot_run_are_refused_naming_the_rule(pattern: str, words: str) -> None:
    with pytest.raises(RuleRegexError) as info:
        compile_rule_regex(pattern, "rules[3] 're:...'")
    error = info.value
    assert error.unsupported and words in error.reason
    assert error.message.startswith("rules[3] 're:...': ") and "linear time" in error.message
    assert "backreferences" in error.hint


@pytest.mark.parametrize("pattern", [r"blk\.(\d+", "(" * 3000 + ")" * 3000, r"a{4294967296}", r"[z-a]"])
def test_invalid_patterns_are_invalid_not_unsupported(pattern: str) -> None:
    with pytest.raises(RuleRegexError) as info:
        compile_rule_regex(pattern)
    assert not info.value.unsupported


def test_set_rules_are_checked_when_given() -> None:
    with pytest.raises(PlanError, match=r"--set 're:\(blk\)\\\\.\\\\1'.*linear time"):
        parse_set_option(r"re:(blk)\.\1=Q8_0")
    with pytest.raises(PlanError, match="invalid regular expression"):
        parse_set_option("re:blk(=Q8_0")
    rule = parse_set_option(f"re:{CATASTROPHIC}=Q8_0")  # fine: it just matches nothing
    assert rule.kind == "regex" and not rule.matches("blk.0.attn_v.weight" * 4)


def test_recipe_rules_regex_property_is_the_same_matcher() -> None:
    from aqrecipe.recipe import parse_recipe

    recipe = parse_recipe("version: 1\nmodel: demo\nquantization:\n  mixture: Q8_0\n  rules:\n"
                          "    - {match: 're:^blk\\.[0-2]\\.attn_v\\.weight\\Z', type: Q8_0}\n")
    regex = recipe.quantization.rules[0].regex
    assert regex is compile_rule_regex(r"^blk\.[0-2]\.attn_v\.weight\Z")
    assert regex.fullmatch("blk.2.attn_v.weight") and not regex.search("blk.3.attn_v.weight")


# --- why a rule chose nothing -----------------------------------------------------------
def _unused(*rules: Rule, tied: bool = True) -> dict[str, str]:
    plan = compile_plan(FakeSource(n_layers=4, tied=tied), PlanSpec(default="Q4_0", rules=rules), model_ref="fake")
    return {split_unused_entry(e)[0].split(" ", 1)[0]: split_unused_entry(e)[1] for e in plan.unused_rules}


def test_no_match_keeps_its_plan_line() -> None:
    plan = compile_plan(FakeSource(n_layers=4), PlanSpec(default="Q4_0", rules=(
        Rule("blk.99.attn_v.weight", "Q8_0", "exact", "rules[0]"),)), model_ref="fake")
    assert plan.unused_rules == ("rules[0] 'blk.99.attn_v.weight' -> Q8_0",)
    assert "warning: rule matches no tensor: rules[0] 'blk.99.attn_v.weight' -> Q8_0" in render_plan(plan)


def test_duplicate_rule_names_the_first() -> None:
    why = _unused(Rule("blk.*.attn_v.weight", "Q8_0", "glob", "rules[0]"),
                  Rule("blk.*.attn_v.weight", "Q6_K", "glob", "rules[1]"))
    assert why == {"rules[1]": "duplicate of rules[0] 'blk.*.attn_v.weight', which comes first"}


def test_shadowed_by_an_earlier_rule_of_the_same_kind() -> None:
    why = _unused(Rule("blk.*.weight", "Q8_0", "glob", "rules[0]"),
                  Rule("blk.*.ffn_down.weight", "Q6_K", "glob", "rules[1]"))
    assert why == {"rules[1]": "never reached: rules[0] 'blk.*.weight' above already matches every tensor it matches"}


def test_shadowed_by_a_kind_that_takes_precedence() -> None:
    exact = [Rule(f"blk.{i}.attn_k.weight", "Q8_0", "exact", f"rules[{i + 1}]") for i in range(4)]
    why = _unused(Rule("re:^blk\\.\\d\\.attn_k", "Q6_K", "regex", "rules[0]"), *exact)
    assert why["rules[0]"].startswith("never reached: rules[1] 'blk.0.attn_k.weight' (an exact name, which takes "
                                      "precedence over regexes) and ")
    assert why["rules[0]"].endswith("and 1 more already match every tensor it matches")


def test_rule_for_tensors_that_stay_f32() -> None:
    why = _unused(Rule("blk.*.attn_norm.weight", "Q8_0", "glob", "rules[0]"))
    assert why == {"rules[0]": "matches only tensors that stay F32 (1-D weights and norms are not quantized), "
                               "e.g. blk.0.attn_norm.weight"}


def test_token_embd_rule_beaten_by_the_output_rule() -> None:
    why = _unused(Rule("token_embd.weight", "Q4_0", "exact", "rules[0]"),
                  Rule("output.weight", "Q8_0", "exact", "rules[1]"))
    assert why == {"rules[0]": "never reached: rules[1] 'output.weight' (the output's rule, which wins on the tied "
                               "token_embd.weight) already matches every tensor it matches"}


@pytest.mark.parametrize("pattern", ["plain", "a: b", "x -> Q8_0: y", "it's", 'say "hi"', "back\\slash", "re:(a|b)"])
def test_unused_entries_split_back_whatever_the_pattern(pattern: str) -> None:
    rule = Rule(pattern, "Q8_0", "glob", "rules[2]")
    assert split_unused_entry(unused_entry(rule, None)) == (f"rules[2] {pattern!r} -> Q8_0", NO_MATCH)
    assert split_unused_entry(unused_entry(rule, "never reached: x: y")) == (
        f"rules[2] {pattern!r} -> Q8_0", "never reached: x: y")


def test_ruleset_reason_is_none_only_when_nothing_matches() -> None:
    rules = RuleSet([Rule("a.weight", "Q8_0", "exact", "rules[0]"), Rule("b.weight", "Q8_0", "exact", "rules[1]")])
    rules.match("a.weight", "model.a.weight")
    assert [(r.origin, why) for r, why in rules.unused_reasons()] == [("rules[1]", None)]
