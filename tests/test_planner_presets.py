"""Every preset in recipes/presets validates and compiles on the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aqrecipe.cli.commands import main

#: the dense presets, checked on the demo; the mixture-of-experts ones (moe-*) need an MoE model and
#: are compiled and applied on tiny MoE models in test_moe_calibration.py
PRESETS = sorted(p for p in (Path(__file__).parent.parent / "recipes" / "presets").glob("*.yaml")
                 if not p.stem.startswith("moe-"))


def test_the_four_presets_exist() -> None:
    names = {p.stem for p in PRESETS}
    assert {"attention-high-precision", "mlp-low-precision", "llama-cpp-q4_k_m-like", "dynamic-1.58bit"} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_compiles(preset: Path, demo_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(preset)]) == 0
    capsys.readouterr()
    assert main(["compile", str(preset), "--summary"]) == 0
    out = capsys.readouterr().out
    assert "total:" in out and "fallbacks" in out  # 576-wide rows fall back for 256-block types
    assert main(["compile", str(preset), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["unused_rules"] == []
    assert plan["totals"]["compression_ratio_vs_f16"] > 2.0


def _types(recipe_args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(["compile", *recipe_args, "--json"]) == 0
    return {e["gguf_name"]: e["type"] for e in json.loads(capsys.readouterr().out)["entries"]}


def test_q4_k_m_like_equals_the_mixture(demo_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    like = next(p for p in PRESETS if p.stem == "llama-cpp-q4_k_m-like")
    mixture = tmp_path / "mix.yaml"
    mixture.write_text("version: 1\nmodel: demo\nquantization:\n  mixture: Q4_K_M\n")
    assert _types([str(like)], capsys) == _types([str(mixture)], capsys)


def test_dynamic_preset_shape(demo_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    types = _types([str(next(p for p in PRESETS if p.stem == "dynamic-1.58bit"))], capsys)
    assert types["blk.10.ffn_down.weight"] == "IQ1_M"  # the bulk: 1.75 bpw
    assert types["blk.4.ffn_down.weight"] == "Q2_K"  # early ffn_down higher
    assert types["blk.1.ffn_down.weight"] == "Q4_K"  # first layers whole at 4 bits
    assert types["token_embd.weight"] == "Q8_0"  # Q6_K falls back on 576-wide rows
    assert types["blk.10.ffn_up.weight"] == "IQ4_NL"  # IQ1_S falls back on 576-wide rows
