"""Simulated quantization: exact super-weight restoration, consistency with the GGUF packer,
the safetensors folder output and ``eval --simulate`` on a tiny llama with a planted super weight."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe.cli.commands import main

ROW, COL = 5, 17
VALUE = 1.2345678  # not on any block grid: quantization alone does not give it back
DOWN = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def planted(tiny_llama_dir, tmp_path_factory) -> Path:
    from test_super_weights import _variant

    return _variant(tiny_llama_dir, tmp_path_factory.mktemp("sim") / "planted", VALUE)


def _sw(value: float = VALUE):
    from aqrecipe.importance import SuperWeight

    return SuperWeight(layer=0, tensor="blk.0.ffn_down.weight", hf_name=DOWN, row=ROW, col=COL, value=value)


def _plan(folder: Path, default: str = "Q4_0", rules=()):
    from aqrecipe.models import open_model
    from aqrecipe.plan import PlanSpec, Rule, compile_plan

    rules = tuple(Rule(p, t, "exact", "test") for p, t in rules)
    return compile_plan(open_model(str(folder)), PlanSpec(default=default, rules=rules), model_ref=str(folder))


def _imatrix(plan):
    from aqrecipe.imatrix import ImatrixData, ImatrixEntry

    rng = np.random.default_rng(3)
    entries = {e.gguf_name: ImatrixEntry(in_sum2=rng.uniform(0.1, 5, (1, e.shape[-1])).astype(np.float32),
                                         counts=np.array([4.0], np.float32))
               for e in plan.entries if e.quantized}
    return ImatrixData(entries, ["test"], 1, 16)


def _simulated(plan, **kw) -> dict[str, np.ndarray]:
    from aqrecipe.apply.simulate import simulated_tensors

    return dict(simulated_tensors(plan, **kw))


def _llama_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order for llama (per head, the two rotary halves interleaved).

    Computed here, in the test only, to check that row-wise simulation in HF order is the GGUF's result.
    """
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_restores_the_exact_value_and_only_that_one(planted):
    plan = _plan(planted)
    plain = _simulated(plan)
    prot = _simulated(plan, super_weights=[_sw()])
    assert plain[DOWN][ROW, COL] != np.float32(VALUE)  # the unprotected run loses it
    assert prot[DOWN][ROW, COL] == np.float32(VALUE)
    mask = np.ones(plain[DOWN].shape, bool)
    mask[ROW, COL] = False
    np.testing.assert_array_equal(prot[DOWN][mask], plain[DOWN][mask])
    assert all(np.array_equal(prot[k], plain[k]) for k in plain if k != DOWN)


def test_simulated_weights_equal_the_dequantized_gguf(planted, tmp_path):
    """Same plan + imatrix: simulated HF weights, in llama.cpp's q/k row order, == dequantize(the GGUF's bytes).

    The simulation quantizes HF rows directly (no transform undone in the library); this is the
    check that per-row quantization makes the converter's row permutation irrelevant.
    """
    from aqrecipe.output.plan_gguf import write_plan_gguf
    from aqrecipe.quant.codecs import dequantize
    from aqrecipe.models import open_model

    plan = _plan(planted, "Q4_0", [("blk.0.attn_q.weight", "Q8_0"), ("blk.1.attn_k.weight", "Q5_1"),
                                   ("blk.0.attn_k.weight", "Q5_0"), ("blk.1.attn_q.weight", "IQ4_NL"),
                                   ("blk.0.ffn_up.weight", "IQ4_NL"), ("blk.1.ffn_down.weight", "F16")])
    imatrix = _imatrix(plan)
    write_plan_gguf(plan, tmp_path / "m.gguf", imatrix=imatrix)
    sim = _simulated(plan, imatrix=imatrix)
    arch = open_model(str(planted)).arch
    by_name = {e.gguf_name: e for e in plan.entries}
    types, checked = set(), set()
    for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors:
        e = by_name[t.name]
        types.add(t.tensor_type.name)
        if e.hf_name not in sim:  # made by the converter (llama3's rope_freqs): no HF tensor to simulate
            continue
        got = sim[e.hf_name]
        if ".attn_q." in e.gguf_name:
            got = _llama_rope_rows(got, arch.n_head)
        elif ".attn_k." in e.gguf_name:
            got = _llama_rope_rows(got, arch.n_head_kv)
        want = dequantize(np.asarray(t.data), t.tensor_type.name, e.shape)
        np.testing.assert_array_equal(got, want, err_msg=e.gguf_name)
        checked.add(e.gguf_name)
    assert {"Q4_0", "Q8_0", "Q5_1", "Q5_0", "IQ4_NL", "F16", "F32"} <= types
    assert {f"blk.{i}.attn_{r}.weight" for i in (0, 1) for r in "qk"} <= checked  # the permuted ones
    assert not np.array_equal(sim[DOWN], _simulated(plan)[DOWN])  # the imatrix reached the quantizer
    # and the permutation is real: without it the q rows would not match
    q = by_name["blk.0.attn_q.weight"]
    assert not np.array_equal(sim[q.hf_name], _llama_rope_rows(sim[q.hf_name], arch.n_head))


def test_an_hf_tensor_feeding_two_types_is_refused(planted):
    """A (hypothetical) HF tensor split into two GGUF tensors of different types has no one simulation."""
    from aqrecipe.apply.simulate import simulated_hf_tensor
    from aqrecipe.errors import PlanError
    from aqrecipe.models import open_model

    plan = _plan(planted, "Q4_0", [("blk.0.ffn_up.weight", "Q8_0")])
    by_name = {e.gguf_name: e for e in plan.entries}
    entries = [by_name["blk.0.ffn_up.weight"], by_name["blk.0.ffn_gate.weight"]]
    with pytest.raises(PlanError, match="different types") as err:
        simulated_hf_tensor(open_model(str(planted)), "model.layers.0.mlp.up_proj.weight", entries)
    assert "one type" in err.value.hint or "same type" in err.value.hint


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_folder_loads_in_transformers_with_the_exact_super_weight(planted, tmp_path, dtype):
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aqrecipe.models import open_model
    from aqrecipe.output.safetensors import encode, write_hf_folder
    from aqrecipe.apply.simulate import simulated_tensors

    plan = _plan(planted)
    source = open_model(str(planted))
    sws = [_sw(VALUE if dtype == "F32" else 1.25)]  # BF16 holds 1.25 exactly, not 1.2345678
    out = write_hf_folder(tmp_path / "hf", plan, source, simulated_tensors(plan, super_weights=sws), dtype=dtype,
                          metadata={"aqrecipe.plan_sha256": plan.sha256()})
    assert not list(tmp_path.glob("hf.tmp-*"))
    assert json.loads((out / "config.json").read_text())["dtype"] == {"F32": "float32", "BF16": "bfloat16"}[dtype]
    sim = _simulated(plan, super_weights=sws)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    got = {k: v.numpy() for k, v in model.state_dict().items()}
    assert got[DOWN][ROW, COL] == np.float32(sws[0].value)
    for name, w in sim.items():
        want = w if dtype == "F32" else np.frombuffer(encode(w, "BF16"), "<u2").astype(np.uint32).__lshift__(16).view(
            np.float32).reshape(w.shape)
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    if dtype == "BF16":  # our rounding is torch's
        np.testing.assert_array_equal(got[DOWN], torch.from_numpy(sim[DOWN]).bfloat16().float().numpy())
    else:
        assert load_file(out / "model.safetensors")[DOWN][ROW, COL] == np.float32(VALUE)
    assert AutoTokenizer.from_pretrained(out)("a b")["input_ids"]


def test_failed_write_leaves_no_folder(planted, tmp_path):
    from aqrecipe.models import open_model
    from aqrecipe.output.safetensors import write_hf_folder
    from aqrecipe.apply.simulate import simulated_tensors

    plan = _plan(planted)

    def broken():
        for i, item in enumerate(simulated_tensors(plan)):
            if i == 5:
                raise RuntimeError("killed")
            yield item

    with pytest.raises(RuntimeError):
        write_hf_folder(tmp_path / "hf", plan, open_model(str(planted)), broken())
    assert list(tmp_path.iterdir()) == []


def test_bad_output_folder_is_refused_before_work(planted, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {planted}\noutput: {{format: safetensors}}\n"
                      "quantization: {default: Q8_0}\nevaluation: {enabled: false}\n")
    assert main(["apply", str(recipe), "-o", str(tmp_path / "taken")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


RECIPE = """version: 1
model: {model}
output: {{format: safetensors}}
imatrix:
  type: compute
  calibration: {{samples: 128, seq_len: 16}}
super_weights:
  detect: {{type: activation, samples: 4, seq_len: 16}}
  protect: {{type: {protect}}}
planner: {{type: budget, target_bpw: 6.0, measurement: {{type: proxy, calibrate_tensors: 0}}}}
quantization: {{default: Q4_0}}
evaluation: {{enabled: true, text: eval.txt, chunks: 2, context: 32}}
"""


@pytest.mark.slow
def test_combined_recipe_writes_a_folder_with_the_super_weight_restored(planted, tmp_path, capsys):
    """imatrix + super weights + planner + safetensors output in one recipe, evaluated in torch."""
    from safetensors.numpy import load_file

    from helpers_models import CORPUS

    (tmp_path / "eval.txt").write_text(" ".join(CORPUS))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=planted, protect="raise-tensor"))
    out = tmp_path / "hf"
    assert main(["apply", str(recipe), "-o", str(out), "--json", "-q", "--report", str(tmp_path / "rep.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "safetensors" and result["imatrix"] is True
    assert [(sw["row"], sw["col"]) for sw in result["super_weights"]["found"]] == [(ROW, COL)]
    assert result["simulated"]["restored_values"] == 1 and result["simulated"]["restore_bytes"] == 8
    assert result["bits_per_weight"] <= 6.0 + 1e-9  # the pinned Q8_0 tensor was paid from the budget
    plan = json.loads((tmp_path / "rep.json").read_text())["plan"]
    types = {e["gguf_name"]: e["type"] for e in plan["entries"]}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and len(set(types.values()) - {"F32"}) >= 2
    assert result["quality"]["kld_mean"] > 0 and result["quality"]["reference"] == str(planted)
    assert load_file(out / "model.safetensors")[DOWN][ROW, COL] == np.float32(VALUE)
    # eval --simulate of the same recipe reuses the stages' checkpoints and gives the folder's numbers
    capsys.readouterr()
    assert main(["eval", str(recipe), "--simulate", "--chunks", "2", "--context", "32", "--text",
                 str(tmp_path / "eval.txt"), "--json", "-q", "--work-dir", str(tmp_path / ".aqrecipe-work" / "hf")]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["simulated"]["restored_values"] == 1
    assert sim["kld_mean"] == pytest.approx(result["quality"]["kld_mean"], rel=1e-5)
    # protection off: the value is not restored, and `-o DIR/` alone picks the folder format
    recipe.write_text(RECIPE.format(model=planted, protect="none").replace("output: {format: safetensors}\n", ""))
    assert main(["apply", str(recipe), "-o", str(tmp_path / "plain") + "/", "--no-eval", "-q",
                 "--work-dir", str(tmp_path / ".aqrecipe-work" / "hf")]) == 0
    assert load_file(tmp_path / "plain" / "model.safetensors")[DOWN][ROW, COL] != np.float32(VALUE)


def test_eval_flags_without_simulate_are_refused(capsys):
    assert main(["eval", "demo", "--imatrix", "x.gguf"]) == 2
    assert "--simulate" in capsys.readouterr().err


def test_eval_simulate_of_a_plain_recipe(planted, tmp_path, capsys):
    from helpers_models import CORPUS

    (tmp_path / "eval.txt").write_text(" ".join(CORPUS))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {planted}\nquantization: {{default: Q4_0}}\n")
    args = ["eval", str(recipe), "--simulate", "--text", str(tmp_path / "eval.txt"), "--chunks", "2", "--context", "32"]
    assert main([*args, "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["simulated"]["restored_values"] == 0 and data["simulated"]["restore_bytes"] == 0
    assert 0 < data["kld_mean"] < 1 and data["reference"] == str(planted) and "simulated" in data["model"]
    # every tensor (the 49152-row head dominates the tiny model's error): more bits, closer to the original
    assert main([*args, "--set", "*=Q8_0", "--json", "-q"]) == 0
    finer = json.loads(capsys.readouterr().out)
    assert finer["kld_mean"] < data["kld_mean"] and finer["simulated"]["quantized_bytes"] > data["simulated"]["quantized_bytes"]
