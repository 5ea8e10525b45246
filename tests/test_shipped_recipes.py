"""Every shipped example works as shown: each file under recipes/ and each YAML recipe block of
README.md validates and compiles against the demo model with no model-aware problem (R2xx).

New files under recipes/ are picked up by the glob. README blocks without ``version:`` are
section fragments ("Optional sections"): they are validated merged into a minimal recipe.
Also: a rule for the output head reaches a tied ``token_embd.weight`` (llama.cpp quantizes a
tied token_embd as the output tensor) and the plan names that rule as the one that chose it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from aqrecipe.cli.commands import main
from aqrecipe.plan import Rule, RuleSet
from aqrecipe.plan.rules import output_aliases

ROOT = Path(__file__).resolve().parent.parent
#: every shipped recipe but the mixture-of-experts presets (moe-*: test_moe_calibration.py runs them on
#: tiny MoE models, since the demo has no experts)
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if not p.stem.startswith("moe-"))
_YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.S | re.M)
#: what a README fragment is merged into (its top-level keys must not repeat these)
MINIMAL = "version: 1\nmodel: demo\nquantization:\n  mixture: Q4_K_M\n"


def _readme_blocks() -> list[tuple[str, str]]:
    """(id, full recipe text) for every ```yaml block of README.md; fragments merged into MINIMAL."""
    found = []
    for n, block in enumerate(_YAML_BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8")), 1):
        data = yaml.safe_load(block)
        assert isinstance(data, dict), f"README yaml block {n} is not a mapping"
        if "version" in data:
            found.append((f"readme-{n}-recipe", block))
        else:
            clash = set(data) & set(yaml.safe_load(MINIMAL))
            assert not clash, f"README fragment {n} repeats {sorted(clash)}: give it version: 1 and a model"
            found.append((f"readme-{n}-sections", MINIMAL + block))
    return found


README_BLOCKS = _readme_blocks()


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def _check_validates_and_compiles(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code, result = _run(["validate", str(path)], capsys)
    issues = result.get("error", {}).get("issues", [])
    assert code == 0, f"{path.name}: validate exit {code}: {issues or result}"
    assert result == {"valid": True, "recipe": str(path)}
    code, plan = _run(["compile", str(path)], capsys)
    assert code == 0, f"{path.name}: compile exit {code}: {plan}"
    assert plan["unused_rules"] == []  # compile's R201 warnings come from these
    assert plan["entries"] and plan["totals"]["bytes"] > 0
    return plan


def test_recipes_folder_is_found() -> None:
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in RECIPES}
    techniques = {"imatrix.yaml", "super-weights.yaml", "planner.yaml", "ultra-low-bit.yaml",
                  "w8a8-compressed-tensors.yaml", "smoothquant-q8_0.yaml", "safetensors.yaml",
                  "custom-rules.yaml", "demo.yaml", "presets/dynamic-1.58bit.yaml"}
    assert techniques <= names
    assert len(README_BLOCKS) >= 2 and any(i.endswith("sections") for i, _ in README_BLOCKS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_shipped_recipe_validates_and_compiles(path: Path, demo_model_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#"), f"{path.name}: start with a comment saying what the recipe does"
    assert yaml.safe_load(text)["model"] == "demo"
    _check_validates_and_compiles(path, capsys)


@pytest.mark.parametrize(("block_id", "text"), README_BLOCKS, ids=[i for i, _ in README_BLOCKS])
def test_readme_recipe_block_validates_and_compiles(block_id: str, text: str, demo_model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{block_id}.yaml"
    path.write_text(text, encoding="utf-8")
    _check_validates_and_compiles(path, capsys)


def _entry(plan: dict, name: str) -> dict:
    return next(e for e in plan["entries"] if e["gguf_name"] == name)


def _compile_rules(tmp_path: Path, rules: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    path = tmp_path / "tied.yaml"
    path.write_text(f"version: 1\nmodel: demo\nquantization:\n  default: Q4_K\n  rules:\n{rules}")
    code, plan = _run(["compile", str(path), *extra], capsys)
    assert code == 0, plan
    return plan


@pytest.mark.parametrize("pattern", ["output.weight", "lm_head.weight", "re:^output\\.weight$", "outp*.weight"])
def test_output_rule_chooses_the_tied_token_embd(pattern: str, demo_model_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    plan = _compile_rules(tmp_path, f"    - match: {json.dumps(pattern)}\n      type: Q6_K\n", capsys)
    assert not any(e["gguf_name"] == "output.weight" for e in plan["entries"])  # the demo is tied
    embd = _entry(plan, "token_embd.weight")
    assert embd["requested_type"] == "Q6_K" and embd["type"] == "Q8_0"  # 576-wide rows: Q6_K -> Q8_0
    assert embd["chosen_by"].startswith(f"rules[0] {pattern!r} (tied embeddings")
    assert plan["unused_rules"] == []
    assert _entry(plan, "blk.0.attn_q.weight")["chosen_by"].startswith("default")
    assert main(["compile", str(tmp_path / "tied.yaml")]) == 0  # the table shows the rule too
    assert f"rules[0] {pattern!r}" in capsys.readouterr().out


@pytest.mark.parametrize("order", ["output-first", "token_embd-first"])
def test_tied_output_rule_beats_a_token_embd_rule(order: str, demo_model_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rules = ["    - match: output.weight\n      type: Q8_0\n", "    - match: token_embd.weight\n      type: Q4_0\n"]
    plan = _compile_rules(tmp_path, "".join(rules if order == "output-first" else rules[::-1]), capsys)
    assert _entry(plan, "token_embd.weight")["requested_type"] == "Q8_0"  # llama.cpp: the output type wins
    assert "'output.weight'" in _entry(plan, "token_embd.weight")["chosen_by"]
    assert len(plan["unused_rules"]) == 1 and "token_embd.weight" in plan["unused_rules"][0]


def test_kind_and_cli_still_come_first_for_the_tied_output(demo_model_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    both = "    - match: \"re:^output\"\n      type: Q8_0\n    - match: token_embd.weight\n      type: Q4_0\n"
    assert _entry(_compile_rules(tmp_path, both, capsys), "token_embd.weight")["requested_type"] == "Q4_0"  # exact > regex
    plan = _compile_rules(tmp_path, "    - match: output.weight\n      type: Q8_0\n", capsys,
                          "--set", "token_embd.weight=Q5_0")
    assert _entry(plan, "token_embd.weight")["chosen_by"] == "--set 'token_embd.weight'"  # --set overrides the recipe


def test_a_rule_matching_nothing_is_still_r201(demo_model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nmodel: demo\nquantization:\n  default: Q4_K\n  rules:\n"
                    "    - match: output.weight\n      type: Q6_K\n    - match: blk.99.attn_v.weight\n      type: Q8_0\n")
    code, result = _run(["validate", str(path)], capsys)
    assert code == 2
    assert [(i["code"], i["line"]) for i in result["error"]["issues"]] == [("R201", 8)]


def test_untied_models_keep_their_own_output() -> None:
    assert output_aliases("token_embd.weight", has_output=True) == ()
    assert output_aliases("blk.0.attn_q.weight", has_output=False) == ()
    rules = RuleSet([Rule("output.weight", "Q8_0", "exact", "rules[0]"), Rule("token_embd.weight", "Q4_0", "exact", "rules[1]")])
    assert rules.match("token_embd.weight", "model.embed_tokens.weight").type == "Q4_0"
    assert rules.match("output.weight", "lm_head.weight").type == "Q8_0"
    assert rules.unused() == []
    # a rule naming both (or a catch-all) is not output-only: list order decides, as for any tensor
    tied = output_aliases("token_embd.weight", has_output=False)
    rules = RuleSet([Rule("*.weight", "Q4_0", "glob", "rules[0]"), Rule("outp*", "Q8_0", "glob", "rules[1]")])
    assert rules.match("token_embd.weight", "model.embed_tokens.weight", aliases=tied).type == "Q8_0"
    rules = RuleSet([Rule("token_embd*", "Q4_0", "glob", "rules[0]"), Rule("*.weight", "Q8_0", "glob", "rules[1]")])
    assert rules.match("token_embd.weight", "model.embed_tokens.weight", aliases=tied).type == "Q4_0"
