"""Hostile recipes (issue 16, classes 3 and 4): bounded alias expansion, bounded messages, finite numbers.

The fixtures of tests/recipes_bad/ (tests/test_recipe.py's BAD_CASES) are one member of each
kind; these tests check the mechanisms over more members: the alias budget at its edge, merge
keys, every path a value reaches a message by, and every way a number enters a recipe.
"""

from __future__ import annotations

import math
import tracemalloc

import pytest
import yaml

from aqrecipe.errors import RecipeError
from aqrecipe.recipe import parse_recipe, recipe_from_dict, validate_data
from aqrecipe.recipe import yaml_positions
from aqrecipe.recipe.excerpt import VALUE_LIMIT, bounded_view, json_excerpt, short_repr
from aqrecipe.recipe.validate import collect_issues

HEAD = "version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\n"


def issues(text: str):
    with pytest.raises(RecipeError) as info:
        parse_recipe(text)
    return info.value.issues


def bomb(levels: int, width: int = 9, at: str = "smoothquant: {alpha: *a%d}\n") -> str:
    lines = [HEAD, f"x0: &a0 [{', '.join(['0.5'] * width)}]\n"]
    for i in range(1, levels):
        lines.append(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]\n")
    return "".join(lines) + at % (levels - 1)


# --- class 3: alias expansion ---------------------------------------------------------
def test_alias_bomb_is_refused_before_anything_walks_it() -> None:
    tracemalloc.start()
    try:
        found = issues(bomb(12))  # 9**12 = 2.8e11 values if expanded
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [i.code for i in found] == ["R014"]
    assert found[0].line is not None and found[0].column is not None
    assert peak < 64 << 20, peak


def test_aliases_below_the_limit_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 rules that alias one mapping: the real use of anchors
    rules = "".join("    - *r\n" for _ in range(40))
    text = (f"version: 1\nmodel: demo\nquantization:\n  mixture: Q8_0\n  rules:\n"
            f"    - &r {{match: 'blk.*.attn_v.weight', type: Q8_0}}\n{rules}")
    recipe = parse_recipe(text)
    assert len(recipe.quantization.rules) == 41
    # the same recipe over a budget smaller than what its aliases add (40 x 5 nodes)
    monkeypatch.setattr(yaml_positions, "ALIAS_NODE_LIMIT", 100)
    assert [i.code for i in issues(text)] == ["R014"]
    monkeypatch.setattr(yaml_positions, "ALIAS_NODE_LIMIT", 40 * 5)
    assert len(parse_recipe(text).quantization.rules) == 41


def test_merge_of_merges_takes_each_key_once() -> None:
    # each level merges the previous one twice: PyYAML's flatten_mapping doubles the pairs per level
    lines = [HEAD, "m0: &m0 {a: 1, b: 2}\n"]
    for i in range(1, 40):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}\n")
    lines.append("evaluation: {<<: *m39}\n")
    found = issues("".join(lines))
    assert found and all(i.code == "R101" for i in found)  # unknown keys, computed in linear time
    assert len(found) == 39 + 42  # m1..m39 at the top, then evaluation's 42 merged keys


@pytest.mark.parametrize("doc", [
    "a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\n",
    "a: &a {x: 1}\nb: &b {x: 2, z: 5}\nc: {<<: [*a, *b], w: 0}\n",
    "a: &a {x: [1, 2]}\nb: {<<: *a}\nc: {<<: {x: 3}, x: 4}\n",
])
def test_merge_keys_mean_what_safe_load_says(doc: str) -> None:
    parsed = yaml_positions.parse_yaml(doc)
    assert not parsed.issues
    assert parsed.data == yaml.safe_load(doc)


def test_a_merged_mapping_brings_its_own_values() -> None:
    # YAML's merge rule: merging b brings b as it reads (y: 2). PyYAML 6 gives y: 1 here, because
    # its flattened b still holds the y it merged from a ahead of b's own y.
    doc = "a: &a {x: 1, y: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: [*b, *a]}\n"
    assert yaml_positions.parse_yaml(doc).data["c"] == {"x": 1, "y": 2}


def test_recursive_merge_is_refused_not_a_recursion_error() -> None:
    found = issues(HEAD + "evaluation: &e {<<: *e}\n")
    assert "R013" in [i.code for i in found] or "R010" in [i.code for i in found]


# --- class 3: what a message prints of a value ----------------------------------------
@pytest.mark.parametrize("extra", [
    "output: {format: '" + "x" * 100_000 + "'}\n",                       # enum (R112)
    "smoothquant: {alpha: [" + ", ".join(["0.5"] * 20_000) + "]}\n",      # oneOf of a huge list
    "evaluation: {chunks: '" + "y" * 100_000 + "'}\n",                    # wrong type (R103)
    "'" + "k" * 100_000 + "': 1\n",                                       # unknown key (R101)
    "version2: !!int '" + "9" * 5000 + "'\n",                             # unreadable value (R013)
    "super_weights: {detect: {type: [" + ", ".join(["1"] * 20_000) + "]}}\n",  # unknown tag (list)
])
def test_messages_show_an_excerpt_of_any_value(extra: str) -> None:
    found = issues(HEAD + extra)
    for issue in found:
        assert len(issue.message) < VALUE_LIMIT + 300, issue.message[:400]
        assert len(str(issue.to_dict()["value"])) <= 4 * VALUE_LIMIT + 10


def test_schema_validator_never_formats_a_whole_value() -> None:
    big = {"version": 1, "model": "demo", "quantization": {"mixture": "Q8_0"},
           "smoothquant": {"alpha": [[0.5] * 1000] * 1000}}  # a million numbers, shared rows
    tracemalloc.start()
    try:
        found = collect_issues(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found and all(len(i.message) < 600 for i in found)
    assert peak < 16 << 20, peak  # a repr of the value alone would be 5 MB


def test_short_repr_and_json_excerpt_are_bounded() -> None:
    nested: list = []
    cur = nested
    for _ in range(5000):  # deeper than any recursion limit
        cur.append([])
        cur = cur[0]
    loop: list = [1]
    loop.append(loop)
    for value in (nested, loop, "z" * 10**6, list(range(10**6)), {str(i): i for i in range(10**5)},
                  10**5000, b"\x00" * 10**6):
        assert len(short_repr(value)) <= VALUE_LIMIT
    assert short_repr([1, "a", {"b": None}]) == repr([1, "a", {"b": None}])
    assert json_excerpt([1, 2, {"a": "b"}]) == [1, 2, {"a": "b"}]
    assert isinstance(json_excerpt(list(range(10**5))), str)
    assert json_excerpt(math.nan) == "nan" and json_excerpt(-math.inf) == "-inf"


def test_bounded_view_equals_the_data_and_keeps_sharing() -> None:
    row = [1, 2, 3]
    data = {"a": [row, row], "b": {"c": "d"}}
    view = bounded_view(data)
    assert view == data and isinstance(view["a"], list) and isinstance(view["b"], dict)
    assert view["a"][0] is view["a"][1]
    assert len(repr(bounded_view([list(range(1000))] * 1000))) <= VALUE_LIMIT


# --- class 4: every float of a recipe is finite ---------------------------------------
@pytest.mark.parametrize("extra, path", [
    ("planner: {type: budget, target_bpw: .nan}\n", "$.planner.target_bpw"),
    ("planner: {type: budget, target_bpw: 4.5, max_kld: .inf}\n", "$.planner.max_kld"),
    ("coherence: {min_top1: .NAN}\n", "$.coherence.min_top1"),
    ("coherence: {max_loop_share: -.Inf}\n", "$.coherence.max_loop_share"),
    ("smoothquant: {alpha: .nan}\n", "$.smoothquant.alpha"),
    ("smoothquant: {alpha: 0.5, problem_threshold: .nan}\n", "$.smoothquant.problem_threshold"),
    ("super_weights: {detect: {type: combined, spike_ratio: .nan}}\n", "$.super_weights.detect.spike_ratio"),
    ("super_weights: {detect: {type: combined}, protect: {type: raise-tensor, imatrix_boost: .inf}}\n",
     "$.super_weights.protect.imatrix_boost"),
    ("evaluation: {chunks: .nan}\n", "$.evaluation.chunks"),  # an integer key: one issue, not two
    ("description: 1.0e+400\n", "$.description"),
])
def test_non_finite_numbers_are_refused_at_their_position(extra: str, path: str) -> None:
    found = issues(HEAD + extra)
    assert [(i.code, i.json_path) for i in found] == [("R113", path)], [i.format() for i in found]
    assert found[0].line == 4 and found[0].column is not None


def test_non_finite_numbers_from_python_data_and_sections() -> None:
    data = {"version": 1, "model": "demo", "quantization": {"mixture": "Q8_0"},
            "planner": {"type": "budget", "target_bpw": float("nan")}}
    assert [(i.code, i.json_path) for i in validate_data(data)] == [("R113", "$.planner.target_bpw")]
    with pytest.raises(RecipeError):
        recipe_from_dict(data)
    from aqrecipe.recipe.sections import parse_section

    with pytest.raises(RecipeError) as info:
        parse_section("smoothquant", {"alpha": float("inf")})
    assert [i.code for i in info.value.issues] == ["R113"]


def test_shortcut_flags_go_through_the_same_number_reader() -> None:
    from aqrecipe.cli.shortcut import shortcut_recipe

    with pytest.raises(RecipeError) as info:
        shortcut_recipe("demo", "Q4_K", target_bpw=float("nan"))
    assert [i.code for i in info.value.issues] == ["R113"]


@pytest.mark.parametrize("extra, words", [
    ("planner: {type: budget, target_bpw: 0}\n", "must be > 0 and <= 32"),
    ("planner: {type: budget, target_bpw: 40}\n", "must be > 0 and <= 32"),
    ("coherence: {max_ppl_ratio: 1}\n", "must be > 1"),
    ("coherence: {min_top1: 2}\n", "must be from 0 to 1"),
    ("evaluation: {chunks: 0}\n", "must be from 1 to 10000"),
    # finite, but float32 importance times it would be infinite
    ("super_weights: {detect: {type: combined}, protect: {type: raise-tensor, imatrix_boost: 1.0e+300}}\n",
     "must be from 1 to 1000000"),
])
def test_range_messages_say_the_allowed_range(extra: str, words: str) -> None:
    found = issues(HEAD + extra)
    assert [i.code for i in found] == ["R104"]
    assert words in found[0].message, found[0].message
