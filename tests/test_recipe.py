"""Recipe schema, loading and validation: presets, malformed fixtures, round trips, fuzzing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aqrecipe.errors import RecipeError
from aqrecipe.plan.mixtures import MIXTURES as MIXTURE_TABLE
from aqrecipe.quant.blocktypes import TYPE_NAMES
from aqrecipe.recipe import (
    CODES,
    EvaluationSpec,
    RecipeIssue,
    dump_recipe_yaml,
    load_recipe,
    load_schema,
    mixture_names,
    parse_recipe,
    recipe_error,
    recipe_from_dict,
    type_names,
    validate_data,
)
from aqrecipe.recipe.paths import format_path, parse_path
from aqrecipe.recipe.schema import section_defaults

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "recipes").glob("*.yaml"))
BAD = ROOT / "tests" / "recipes_bad"

# The code's tables (the Rust layout table, the mixture table): the schema's static enums must equal them.
TYPES: tuple[str, ...] = TYPE_NAMES
MIXTURES: tuple[str, ...] = tuple(MIXTURE_TABLE)


def issues_of(path_or_text, source=None) -> list[RecipeIssue]:
    with pytest.raises(RecipeError) as info:
        if isinstance(path_or_text, Path):
            load_recipe(path_or_text)
        else:
            parse_recipe(path_or_text, source)
    assert info.value.issues, "a RecipeError must carry issues"
    return info.value.issues


# --- presets ------------------------------------------------------------------


def test_there_are_presets():
    names = {p.name for p in PRESETS}
    assert {"q4_k_m.yaml", "q8_0.yaml", "q4_0.yaml", "custom-rules.yaml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_validates(path):
    recipe = load_recipe(path)
    assert recipe.version == 1
    assert recipe.model == "demo"
    assert recipe.source_path == path
    assert recipe.quantization.mixture or recipe.quantization.default
    # also valid against the published schema with plain jsonschema
    jsonschema.validate(yaml.safe_load(path.read_text()), load_schema())


def test_custom_rules_kinds_and_defaults():
    recipe = load_recipe(ROOT / "recipes" / "custom-rules.yaml")
    kinds = [(r.kind, r.index) for r in recipe.quantization.rules]
    assert kinds == [("exact", 0), ("regex", 1), ("glob", 2), ("glob", 3)]
    regex_rule = recipe.quantization.rules[1]
    assert not regex_rule.pattern.startswith("re:")  # prefix stripped
    assert regex_rule.match_text.startswith("re:")
    assert regex_rule.regex.fullmatch("blk.2.attn_v.weight")
    assert not regex_rule.regex.fullmatch("blk.7.attn_v.weight")
    assert recipe.quantization.rules[0].regex is None


# --- malformed recipes: one fixture per kind ----------------------------------


@dataclass(frozen=True)
class Bad:
    file: str
    code: str
    line: int | None
    column: int | None
    mentions: str  # the message must name the offending value / key
    path: str = "$"


BAD_CASES = [
    #   fixture                          code    line col   message names         JSON path
    Bad("yaml_syntax.yaml",              "R010", 5, 11,   "expected ','"),
    Bad("tab_indent.yaml",               "R011", 4, 1,    "tab"),
    Bad("unknown_top_key.yaml",          "R101", 5, 1,    "'evalutaion'",       "$.evalutaion"),
    Bad("unknown_nested_key.yaml",       "R101", 6, 3,    "'chunk'",            "$.evaluation.chunk"),
    Bad("wrong_type.yaml",               "R103", 6, 11,   "'sixteen'",          "$.evaluation.chunks"),
    Bad("out_of_range.yaml",             "R104", 7, 12,   "8",                  "$.evaluation.context"),
    Bad("unknown_type.yaml",             "R105", 9, 13,   "'Q4_KM'",            "$.quantization.rules[1].type"),
    Bad("unknown_mixture.yaml",          "R106", 4, 12,   "'Q4KM'",             "$.quantization.mixture"),
    Bad("bad_regex.yaml",                "R109", 6, 14,   "missing )",          "$.quantization.rules[0].match"),
    Bad("wrong_version.yaml",            "R107", 1, 10,   "2",                  "$.version"),
    Bad("version_string.yaml",           "R107", 1, 10,   "'1'",                "$.version"),
    Bad("missing_version.yaml",          "R108", 2, 1,    "'version'",          "$.version"),
    Bad("missing_model.yaml",            "R102", 1, 1,    "'model'",            "$.model"),
    Bad("missing_quantization.yaml",     "R102", 1, 1,    "'quantization'",     "$.quantization"),
    Bad("no_mixture_or_default.yaml",    "R111", 4, 3,    "'mixture' or 'default'", "$.quantization"),
    Bad("duplicate_key.yaml",            "R012", 5, 1,    "'model'",            "$.model"),
    Bad("empty.yaml",                    "R020", 1, 1,    "empty"),
    Bad("not_mapping.yaml",              "R021", 1, 1,    "list"),
    Bad("rule_without_type.yaml",        "R102", 6, 7,    "'type'",             "$.quantization.rules[0].type"),
    Bad("empty_rule_entry.yaml",         "R110", 6, 6,    "empty rules entry",  "$.quantization.rules[0]"),
    Bad("empty_pattern.yaml",            "R110", 6, 14,   "''",                 "$.quantization.rules[0].match"),
    Bad("custom_tag.yaml",               "R013", 2, 8,    "python/object",      "$.model"),
    Bad("bad_output_format.yaml",        "R112", 4, 11,   "'onnx'",             "$.output.format"),
    Bad("not_utf8.yaml",                 "R003", 3, 18,   "e9"),
    # issue 16, class 3: small inputs that would cost unbounded work
    Bad("alias_bomb_list.yaml",          "R014", 7, 5,    "more than 10000 nodes", "$.x4[0]"),
    Bad("alias_bomb_mapping.yaml",       "R014", 8, 7,    "billion laughs",     "$.quantization.m3.h"),
    Bad("alias_bomb_merge.yaml",         "R014", 7, 5,    "anchor on line 7",   "$.b3.v5"),
    Bad("alias_bomb_rules.yaml",         "R014", 10, 7,   "aliases",            "$.quantization.rules[4][0]"),
    Bad("regex_backreference.yaml",      "R114", 6, 14,   "\\1",                "$.quantization.rules[0].match"),
    Bad("regex_lookahead.yaml",          "R114", 6, 14,   "(?!",                "$.quantization.rules[0].match"),
    Bad("regex_possessive.yaml",         "R114", 6, 14,   "++",                 "$.quantization.rules[0].match"),
    Bad("huge_value.yaml",               "R112", 6, 11,   "'onnx-onnx-",        "$.output.format"),
    # issue 16, class 4: numbers that are not finite, or out of range
    Bad("nan_max_kld.yaml",              "R113", 8, 12,   "nan",                "$.planner.max_kld"),
    Bad("inf_alpha.yaml",                "R113", 6, 10,   "inf",                "$.smoothquant.alpha"),
    Bad("nan_in_list.yaml",              "R113", 7, 22,   "NaN",                "$.smoothquant.alpha_grid[1]"),
    Bad("overflow_to_inf.yaml",          "R113", 7, 18,   "infinity",           "$.coherence.max_ppl_ratio"),
    Bad("target_bpw_zero.yaml",          "R104", 5, 37,   "must be > 0 and <= 32", "$.planner.target_bpw"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.file)
def test_bad_recipe_reports_code_and_position(case: Bad):
    found = issues_of(BAD / case.file)
    assert len(found) == 1, [i.format() for i in found]
    issue = found[0]
    assert (issue.code, issue.line, issue.column, issue.json_path) == (
        case.code, case.line, case.column, case.path), issue.format()
    assert case.mentions in issue.message
    assert issue.source == str(BAD / case.file)
    assert issue.format().startswith(f"{BAD / case.file}:{case.line}:{case.column}: {case.code} ")


def test_every_fixture_is_in_the_table():
    listed = {c.file for c in BAD_CASES} | {"multiple_errors.yaml"}
    assert {p.name for p in BAD.glob("*.yaml")} == listed
    assert len(listed) >= 18


def test_multiple_errors_reported_together_in_file_order():
    found = issues_of(BAD / "multiple_errors.yaml")
    got = [(i.code, i.line, i.column) for i in found]
    assert got == [
        ("R107", 1, 10),   # version: 3
        ("R109", 6, 14),   # re:(
        ("R105", 7, 13),   # Q9_K
        ("R104", 9, 11),   # chunks: 0
        ("R103", 10, 12),  # enabled: maybe
        ("R101", 11, 3),   # colour
    ]
    with pytest.raises(RecipeError) as info:
        load_recipe(BAD / "multiple_errors.yaml")
    text = str(info.value)
    assert "6 problems" in text and text.count("multiple_errors.yaml:") == 7


def test_unknown_key_lists_siblings_and_suggests():
    issue = issues_of(BAD / "unknown_nested_key.yaml")[0]
    assert issue.allowed == ("chunks", "context", "enabled", "text")
    assert issue.suggestion == "chunks"
    assert "did you mean 'chunks'?" in issue.format()


def test_unknown_type_suggestion_and_allowed():
    issue = issues_of(BAD / "unknown_type.yaml")[0]
    assert issue.value == "Q4_KM"
    assert issue.suggestion == "Q4_K"
    assert issue.allowed == TYPES
    assert issue.format().endswith(f"(allowed: {', '.join(TYPES)})")
    mixture = issues_of(BAD / "unknown_mixture.yaml")[0]
    assert mixture.suggestion == "Q4_K_M"


def test_range_issue_gives_bounds():
    issue = issues_of(BAD / "out_of_range.yaml")[0]
    assert issue.value == 8 and issue.allowed == "16..32768"
    high = issues_of("version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\nevaluation: {chunks: 10001}\n")[0]
    assert (high.code, high.line, high.column, high.allowed) == ("R104", 4, 22, "1..10000")


def test_file_not_found_and_unreadable(tmp_path):
    missing = issues_of(tmp_path / "nope.yaml")[0]
    assert missing.code == "R001" and "nope.yaml" in missing.message
    folder = issues_of(tmp_path)[0]
    assert folder.code == "R002"


def test_duplicate_key_names_first_line():
    issue = issues_of(BAD / "duplicate_key.yaml")[0]
    assert "line 2" in issue.message


@pytest.mark.parametrize(
    "text, code, line, column",
    [
        ("version: 1\nmodel: demo\nquantization:\n  default: Q4_K\n  rules:\n    - match: 're:'\n      type: Q8_0\n",
         "R110", 6, 14),
        ("version: 1\nmodel: demo\nquantization:\n  mixture: Q8_0\nevaluation:\n", "R103", 5, 12),
        ("version: 1\nmodel: ''\nquantization: {mixture: Q8_0}\n", "R104", 2, 8),
        ("version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\n? [a, b]\n: 1\n", "R013", 4, 3),
        ("version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\nname: !!int abc\n", "R013", 4, 7),
        ("version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\nname: !!set {a}\n", "R013", 4, 7),
        ("version: 1\nmodel: &m [*m]\nquantization: {mixture: Q8_0}\n", "R013", 2, 8),
        ("version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\n---\nversion: 1\n", "R010", 4, 1),
        ("version: 1\nmodel: demo\x00\n", "R010", 2, 12),
        ("42\n", "R021", 1, 1),
        ("version: 1\nmodel: demo\nquantization: {mixture: Q8_0, default: Q7}\n", "R105", 3, 40),
    ],
    ids=["empty-regex", "null-section", "empty-model", "list-key", "bad-int-tag", "set-tag", "recursive-alias",
         "two-documents", "nul-character", "scalar-root", "flow-style-position"],
)
def test_more_malformed_inputs(text, code, line, column):
    found = issues_of(text)
    assert (code, line, column) in [(i.code, i.line, i.column) for i in found], [i.format() for i in found]


def test_yaml_merge_keys_work_and_positions_follow_the_anchor():
    text = ("version: 1\nmodel: demo\nbase: &b {mixture: Q4_K_M}\nquantization:\n  <<: *b\n  default: Q4_K\n")
    found = issues_of(text)  # 'base' is unknown, but the merge itself is accepted
    assert [i.code for i in found] == ["R101"]
    recipe = parse_recipe("version: 1\nmodel: demo\nquantization: &q\n  mixture: Q4_K_M\n")
    assert recipe.quantization.mixture == "Q4_K_M"


def test_bytes_input_and_bom():
    recipe = parse_recipe("\ufeffversion: 1\nmodel: demo\nquantization: {mixture: Q8_0}\n".encode())
    assert recipe.quantization.mixture == "Q8_0"


# --- model, defaults, positions, round trip --------------------------------------


def test_defaults_applied_and_match_schema():
    recipe = parse_recipe("version: 1\nmodel: demo\nquantization: {default: Q4_0}\n")
    assert recipe.output.format == "gguf" and recipe.output.path is None
    assert recipe.evaluation == EvaluationSpec(enabled=True, text=None, chunks=16, context=512)
    assert recipe.quantization.rules == ()
    assert section_defaults("evaluation") == {"enabled": True, "text": None, "chunks": 16, "context": 512}
    assert section_defaults("output") == {"format": "gguf", "dtype": "auto"}


@pytest.mark.parametrize("match, kind", [
    ("output.weight", "exact"), ("re:blk\\.\\d+\\..*", "regex"), ("blk.*.ffn_down.weight", "glob"),
    ("blk.?.attn_v.weight", "glob"), ("blk.[0-3].attn_v.weight", "glob"), ("re:blk.*", "regex"),
])
def test_rule_kind(match, kind):
    recipe = parse_recipe(f"version: 1\nmodel: demo\nquantization:\n  default: Q4_K\n  rules:\n"
                          f"    - {{match: {json.dumps(match)}, type: Q6_K}}\n")
    rule = recipe.quantization.rules[0]
    assert rule.kind == kind and rule.match_text == match


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_round_trip_to_dict_dump_parse(path):
    recipe = load_recipe(path)
    data = recipe.to_dict()
    assert json.loads(json.dumps(data)) == data
    text = dump_recipe_yaml(recipe)
    again = parse_recipe(text)
    assert again == recipe
    assert again.to_dict() == data
    assert recipe_from_dict(data) == recipe
    assert dump_recipe_yaml(data) == text


def test_dump_key_order_is_stable():
    text = dump_recipe_yaml({"quantization": {"rules": [{"type": "Q6_K", "match": "x"}], "mixture": "Q8_0"},
                             "model": "demo", "version": 1, "evaluation": {"context": 64, "enabled": False}})
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    assert keys == ["version", "model", "quantization", "evaluation"]
    assert text.index("mixture") < text.index("rules") and text.index("match") < text.index("type: Q6_K")
    assert text.index("enabled") < text.index("context")


def test_recipe_from_dict_collects_issues_without_positions():
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"version": 1, "model": "demo", "quantization": {"mixture": "Q9"}, "extra": 1})
    got = sorted((i.code, i.json_path, i.line) for i in info.value.issues)
    assert got == [("R101", "$.extra", None), ("R106", "$.quantization.mixture", None)]
    assert validate_data([]) [0].code == "R021"
    assert validate_data({"version": 1, "model": "demo", "quantization": {"mixture": "Q8_0"}}) == []


def test_position_of_and_issue_at():
    recipe = load_recipe(ROOT / "recipes" / "custom-rules.yaml")
    lines = recipe.source_text.splitlines()
    line, column = recipe.position_of("$.quantization.rules[2].type")
    assert lines[line - 1][column - 1:].startswith("Q5_K")
    assert recipe.position_of("$.model") == (7, 8)
    assert recipe.position_of("$.output.nope") is None
    assert recipe.position_of("$.output.nope", nearest=True) == recipe.position_of("$.output")
    issue = recipe.issue_at("$.quantization.rules[2]", "R201", "rule 'blk.*.ffn_down.weight' matches no tensor",
                            value="blk.*.ffn_down.weight", allowed=["blk.0.ffn_down.weight"])
    assert (issue.line, issue.code, issue.allowed) == (line - 1, "R201", ("blk.0.ffn_down.weight",))
    assert issue.format().startswith(f"{recipe.source_path}:{line - 1}:")
    err = recipe_error([issue, recipe.issue_at("$.model", "R202", "model 'demo' not found")])
    assert isinstance(err, RecipeError) and len(err.issues) == 2 and "R202" in str(err)
    assert recipe_from_dict(recipe.to_dict()).position_of("$.model") is None


def test_resolve_path(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "r.yaml"
    f.write_text("version: 1\nmodel: ../hf\noutput: {path: out/m.gguf}\nquantization: {mixture: Q8_0}\n")
    recipe = load_recipe(f)
    assert recipe.resolve_path(recipe.model) == tmp_path / "sub" / ".." / "hf"
    assert recipe.resolve_path(recipe.output.path) == tmp_path / "sub" / "out" / "m.gguf"
    assert recipe.resolve_path("/abs/x") == Path("/abs/x")


def test_issue_to_dict_is_json():
    issue = issues_of(BAD / "not_utf8.yaml")[0]
    json.dumps(issue.to_dict())
    dated = issues_of("version: 1\nmodel: 2024-01-01\nquantization: {mixture: Q8_0}\n")[0]
    assert dated.code == "R103" and json.loads(json.dumps(dated.to_dict()))["value"] == "2024-01-01"


@pytest.mark.parametrize("path", ["$", "$.a", "$.quantization.rules[1].type", "$['odd key'].x[0]",
                                  "$['it\\'s']"])
def test_json_path_round_trip(path):
    assert format_path(parse_path(path)) == path


# --- schema shape ------------------------------------------------------------------


def test_schema_is_closed_documented_and_lists_names():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    assert type_names() == TYPES
    # Same names; the schema lists them in its own order (the one its error messages and docs show).
    assert sorted(mixture_names()) == sorted(MIXTURES) and len(set(mixture_names())) == len(MIXTURES)
    assert tuple(schema["$defs"]["planner"]["properties"]["candidates"]["items"]["enum"]) == TYPES

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                assert node.get("additionalProperties") is False, where
                for name, prop in node["properties"].items():
                    assert prop.get("description"), f"{where}.{name} has no description"
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(schema, "#")
    assert (ROOT / "schema" / "recipe.schema.json").resolve() == (ROOT / "aqrecipe/data/recipe.schema.json")


def test_codes_documented():
    doc = (ROOT / "docs" / "recipe-errors.md").read_text()
    import aqrecipe.recipe as pkg
    import aqrecipe.recipe.issues as issues_mod
    for code in CODES:
        assert re.search(rf"\| {code} \|", doc), code
        assert code in issues_mod.__doc__ and code in pkg.__doc__, code


def test_import_does_not_pull_torch_or_extension():
    code = ("import sys, aqrecipe.recipe; "
            "bad = [m for m in ('torch', 'aqrecipe._packer', 'numpy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


# --- fuzzing ------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                     st.text(max_size=12), st.sampled_from(list(TYPES) + ["re:(", "re:", "demo", "1"]))
_keys = st.sampled_from(["version", "model", "quantization", "mixture", "default", "rules", "match", "type",
                         "evaluation", "output", "chunks", "context", "text", "enabled", "format", "path", "x"])
_trees = st.recursive(_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                         st.dictionaries(_keys, kids, max_size=5)), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"#%@`,?\t\n .0123456789~<=\\")), max_size=80))
def test_junk_yaml_only_raises_recipe_error(text):
    try:
        parse_recipe(text)
    except RecipeError as exc:
        assert exc.issues and all(isinstance(i, RecipeIssue) for i in exc.issues)
        for i in exc.issues:
            i.format()
            json.dumps(i.to_dict())


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=60))
def test_junk_bytes_only_raise_recipe_error(raw):
    try:
        parse_recipe(raw)
    except RecipeError as exc:
        assert exc.issues


@settings(max_examples=200, deadline=None)
@given(_trees)
def test_structured_junk_only_raises_recipe_error(tree):
    text = yaml.safe_dump(tree)
    try:
        recipe = parse_recipe(text)
    except RecipeError as exc:
        assert exc.issues
        assert all(i.line is not None for i in exc.issues if i.code.startswith("R1"))
    else:
        assert parse_recipe(dump_recipe_yaml(recipe)) == recipe


@pytest.mark.parametrize(("rule", "code", "words"), [
    ("{type: Q6_K}", "R102", "missing 'match' or 'role'"),
    ("{match: output.weight, role: output, type: Q6_K}", "R112", "either 'match' or 'role', not both"),
])
def test_a_rule_names_its_tensors_one_way(tmp_path: Path, rule: str, code: str, words: str) -> None:
    from aqrecipe.recipe import RecipeError, load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\nmodel: demo\nquantization:\n  default: Q4_K\n  rules:\n    - {rule}\n", encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = "\n".join(i.format() for i in info.value.issues)
    assert f" {code} " in text and words in text, text
    if code == "R102":  # the hint lists the role groups
        assert "experts, shared_experts, router" in text, text


def test_a_role_rule_round_trips_as_written(tmp_path: Path) -> None:
    from aqrecipe.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nmodel: demo\nquantization:\n  default: Q4_K\n  rules:\n    - role: experts\n"
                    "      type: IQ1_S\n", encoding="utf-8")
    rule = load_recipe(path).quantization.rules[0]
    assert (rule.kind, rule.pattern, rule.match_text) == ("role", "experts", "role:experts")
    assert rule.to_dict() == {"role": "experts", "type": "IQ1_S"}
