"""GPTQ rounding through recipe, plan, calibration and apply (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe.calibration.hessians import HessianObserver, HessianStore, memory_bound, stage_file
from aqrecipe.calibration.observers import InputStatsObserver
from aqrecipe.cli import main
from aqrecipe.errors import RecipeError, ResumeError
from aqrecipe.recipe import load_recipe
from aqrecipe.recipe.rounding import RTN, Rounding

GPTQ = "  rounding: {type: gptq, damp: 0.02, block_size: 64, act_order: true}\n"


def _recipe(tmp_path: Path, model: str | Path, quant: str, extra: str = "", name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"version: 1\nmodel: {model}\nquantization:\n{quant}evaluation: {{enabled: false}}\n{extra}",
                    encoding="utf-8")
    return path


def test_recipe_rounding_and_rule_override(tmp_path: Path) -> None:
    r = load_recipe(_recipe(tmp_path, "demo", "  default: Q4_0\n" + GPTQ + "  rules:\n"
                            "    - {match: 'blk.*.ffn_down.weight', type: Q8_0, rounding: {type: rtn}}\n"
                            "    - {match: 'blk.0.*', type: Q4_0}\n"))
    assert r.quantization.rounding == Rounding("gptq", 0.02, 64, True)
    assert r.quantization.rules[0].rounding == RTN and r.quantization.rules[1].rounding is None
    assert r.to_dict()["quantization"]["rounding"] == {"type": "gptq", "damp": 0.02, "block_size": 64,
                                                       "act_order": True}
    plain = load_recipe(_recipe(tmp_path, "demo", "  default: Q4_0\n", name="p.yaml"))
    assert plain.quantization.rounding == RTN and "rounding" not in plain.to_dict()["quantization"]


@pytest.mark.parametrize("bad", ["{type: gptq, damp: -1}", "{type: gptq, block_size: 0}", "{type: awq}",
                                 "{damp: 0.1}", "{type: gptq, act_order: 3}"])
def test_bad_rounding_is_a_recipe_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, "demo", f"  default: Q4_0\n  rounding: {bad}\n"))
    assert "rounding" in str(err.value.issues[0].json_path)


def test_hessian_observer_sums_shares_and_spills(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stats = InputStatsObserver("numpy")
    obs = HessianObserver(tmp_path / "h")
    obs.bind(stats)
    xs = [rng.standard_normal((50, 8)).astype(np.float32) for _ in range(3)]
    for x in xs:
        obs.observe(0, "blk.0.attn_q.weight", x, None)
    stats.alias("blk.0.attn_k.weight", "blk.0.attn_q.weight")
    assert not obs.wants("blk.0.attn_k.weight") and obs.wants("blk.0.ffn_down.weight")
    obs.observe(0, "blk.0.ffn_down.weight", xs[0][:, :4], None)
    assert obs.layer_state(0)["written"][0] == 2
    assert stage_file(tmp_path / "h", 0).is_file()
    obs.observe(1, "blk.1.attn_q.weight", xs[1], None)
    obs.finish()
    store = obs.store()
    x = np.concatenate(xs).astype(np.float64)
    np.testing.assert_allclose(store.get("blk.0.attn_q.weight"), x.T @ x / len(x), rtol=1e-5)
    np.testing.assert_array_equal(store.get("blk.0.attn_k.weight"), store.get("blk.0.attn_q.weight"))
    assert store.get("blk.0.ffn_down.weight").shape == (4, 4) and "blk.1.attn_q.weight" in store
    assert store.get("output.weight") is None
    assert len(HessianStore(tmp_path / "h", stages=[1])) == 1
    resumed = HessianObserver(tmp_path / "h")
    resumed.restore_layer_state(0, {"written": np.array([2])})
    stage_file(tmp_path / "h", 0).unlink()
    with pytest.raises(ResumeError, match="missing"):
        HessianObserver(tmp_path / "h").restore_layer_state(0, {"written": np.array([2])})
    assert memory_bound([4096, 4096, 4096, 11008]) == 16 * (3 * 4096**2 + 11008**2)


def _tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, np.ascontiguousarray(t.data).tobytes())
            for t in gguf.GGUFReader(str(path)).tensors}


@pytest.mark.slow
def test_apply_gptq_end_to_end(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """rtn bytes equal the plain run's; gptq bytes differ, decode, and lower the layer output error;
    a second gptq run resumes from its checkpoints to the same bytes; --imatrix takes a separate pass."""
    from helpers_models import CORPUS

    text = tmp_path / "c.txt"
    text.write_text("\n".join(CORPUS * 40), encoding="utf-8")
    calib = ("imatrix:\n  type: compute\n  calibration:\n    source: {type: text, path: c.txt}\n"
             "    samples: 128\n    seq_len: 16\n")
    outs = {}
    for name, quant in (("plain", "  default: Q4_0\n"), ("rtn", "  default: Q4_0\n  rounding: {type: rtn}\n"),
                        ("gptq", "  default: Q4_0\n" + GPTQ)):
        recipe = _recipe(tmp_path, tiny_llama_dir, quant, calib, name=f"{name}.yaml")
        outs[name] = tmp_path / f"{name}.gguf"
        report = tmp_path / f"{name}.json"
        assert main(["apply", str(recipe), "-o", str(outs[name]), "--report", str(report), "-q"]) == 0
    plain, rtn, gp = (_tensors(outs[k]) for k in ("plain", "rtn", "gptq"))
    assert rtn == plain
    data = json.loads((tmp_path / "gptq.json").read_text())
    assert data["rounding"]["hessian_pass"] == "shared with the imatrix"
    assert data["rounding"]["hessians"] >= 4
    differ = [n for n in gp if gp[n] != plain[n]]
    assert differ and all(gp[n][0] == plain[n][0] for n in gp)
    assert "token_embd.weight" not in differ
    # the GPTQ tensors decode in gguf-py and beat rtn on the Hessian's own error measure
    store = HessianStore(tmp_path / ".aqrecipe-work" / "gptq.gguf" / "imatrix-gptq")
    from aqrecipe.models import open_model

    src = open_model(str(tiny_llama_dir))
    reader = {t.name: t for t in gguf.GGUFReader(str(outs["gptq"])).tensors}
    reader_rtn = {t.name: t for t in gguf.GGUFReader(str(outs["rtn"])).tensors}
    wins = 0
    for name in differ:
        w = src.read_for_gguf(name).reshape(-1, reader[name].shape[0])
        h = store.get(name).astype(np.float64)
        err = {}
        for label, r in (("gptq", reader[name]), ("rtn", reader_rtn[name])):
            wq = gguf.quants.dequantize(r.data, r.tensor_type).reshape(w.shape)
            d = (w - wq).astype(np.float64)
            err[label] = float(np.einsum("ij,jk,ik->", d, h, d))
        wins += err["gptq"] < err["rtn"]
    assert wins == len(differ)
    # a rerun resumes from the finished checkpoints (no stage recomputed) to the same bytes
    again = tmp_path / "again.gguf"
    assert main(["apply", str(tmp_path / "gptq.yaml"), "-o", str(again), "--work-dir",
                 str(tmp_path / ".aqrecipe-work" / "gptq.gguf"), "-q"]) == 0
    assert _tensors(again) == gp
    # an imatrix file: the Hessians come from their own calibration pass
    imatrix = tmp_path / "i.gguf"
    assert main(["imatrix", "compute", str(tiny_llama_dir), "-o", str(imatrix), "--source", "text", "--text",
                 str(text), "--samples", "128", "--seq-len", "16", "-q"]) == 0
    recipe = _recipe(tmp_path, tiny_llama_dir, "  default: Q4_0\n" + GPTQ,
                     "imatrix: {type: file, path: i.gguf}\n", name="file.yaml")
    out = tmp_path / "file.gguf"
    assert main(["apply", str(recipe), "-o", str(out), "--report", str(tmp_path / "file.json"), "-q"]) == 0
    assert json.loads((tmp_path / "file.json").read_text())["rounding"]["hessian_pass"] == "separate"
    assert _tensors(out).keys() == gp.keys()


def test_quantize_flag_emits_the_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", "demo", "--type", "Q4_K_M", "--rounding", "gptq", "--emit-recipe"]) == 0
    out = capsys.readouterr().out
    assert "rounding:" in out and "type: gptq" in out and "type: compute" in out
    assert main(["quantize", "demo", "--type", "Q4_K_M", "--emit-recipe"]) == 0
    assert "rounding" not in capsys.readouterr().out


def test_plan_carries_rounding_only_for_gptq_entries(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from aqrecipe.plan.from_recipe import plan_from_recipe

    recipe = load_recipe(_recipe(tmp_path, tiny_llama_dir, "  default: Q4_0\n" + GPTQ + "  rules:\n"
                                 "    - {match: 'blk.0.ffn_down.weight', type: Q8_0, rounding: {type: rtn}}\n"))
    plan = plan_from_recipe(recipe)
    by = {e.gguf_name: e for e in plan.entries}
    assert by["blk.0.ffn_down.weight"].rounding is None and by["token_embd.weight"].rounding is None
    assert by["blk.1.ffn_down.weight"].rounding == Rounding("gptq", 0.02, 64, True).to_dict()
    assert all(e.rounding is None for e in plan.entries if not e.quantized)
    from aqrecipe.plan import Plan

    assert Plan.from_dict(json.loads(plan.to_json())) == plan
    plain = plan_from_recipe(load_recipe(_recipe(tmp_path, tiny_llama_dir, "  default: Q4_0\n", name="p.yaml")))
    assert all("rounding" not in e for e in plain.to_dict()["entries"])
