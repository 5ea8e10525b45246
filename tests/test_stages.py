"""apply with every rule-producing stage on a tiny model: imatrix -> super weights -> planner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llamacpp_tools import tensor_types

from aqrecipe.cli.commands import main

pytestmark = pytest.mark.slow


def _apply_json(tmp_path: Path, name: str, recipe_text: str, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict]:
    """Write ``{name}.yaml``, ``apply`` it to ``{name}.gguf`` with ``--json``; the output path and the parsed result."""
    recipe, out = tmp_path / f"{name}.yaml", tmp_path / f"{name}.gguf"
    recipe.write_text(recipe_text)
    assert main(["apply", str(recipe), "-o", str(out), "--json", "-q"]) == 0
    return out, json.loads(capsys.readouterr().out)


def test_combined_recipe_end_to_end(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, result = _apply_json(
        tmp_path, "o",
        f"version: 1\nmodel: {tiny_llama_dir}\n"
        "imatrix:\n  type: compute\n  calibration: {samples: 128, seq_len: 16}\n  save: im.gguf\n"
        "super_weights:\n  detect: {type: activation, samples: 4, seq_len: 16}\n"
        "planner: {type: budget, target_bpw: 6.0, measurement: {type: proxy, samples: 2, seq_len: 16, calibrate_tensors: 4}}\n"
        "quantization: {default: Q8_0}\nevaluation: {enabled: false}\n",
        capsys,
    )
    assert result["imatrix"] is True and (tmp_path / "im.gguf").is_file()
    assert result["super_weights"]["verdict"] == "no clear super weight"  # random weights have none
    assert all(Path(f).is_file() for f in result["planner"]["report_files"])
    assert 5.5 < result["bits_per_weight"] <= 6.0 + 1e-9
    assert len(set(tensor_types(out).values()) - {"F32"}) >= 2  # the planner mixed types
    # a second run resumes from the checkpoints and gives the same bytes
    again = tmp_path / "again.gguf"
    assert main(["apply", str(tmp_path / "o.yaml"), "-o", str(again), "-q", "--work-dir", str(tmp_path / ".aqrecipe-work" / "o.gguf")]) == 0
    assert again.read_bytes() == out.read_bytes()
    # the importance file of the run: report with a plot, and inspect
    importance = Path(result["super_weights"]["importance_file"])
    png = tmp_path / "importance.png"
    capsys.readouterr()
    assert main(["report", str(importance), "--plot", str(png)]) == 0
    assert "no clear super weight" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["inspect", str(importance), "--json"]) == 0


def test_smoothquant_recipe_writes_a_q8_0_gguf(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, result = _apply_json(
        tmp_path, "w8a8",
        f"version: 1\nmodel: {tiny_llama_dir}\n"
        "imatrix:\n  type: compute\n  calibration: {samples: 128, seq_len: 16}\n"
        "smoothquant:\n  alpha: 0.5\n  output: {type: gguf-q8_0}\n"
        "quantization: {mixture: Q8_0}\nevaluation: {enabled: true, chunks: 2, context: 32}\n",
        capsys,
    )
    sq = result["smoothquant"]
    assert sq["alpha"] == 0.5 and sq["equivalence_max_rel_logit_diff"] < 1e-4
    assert result["quality"]["kld_mean"] < 1e-3
    assert set(tensor_types(out).values()) == {"F32", "Q8_0"}
