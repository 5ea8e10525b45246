"""SmoothQuant end to end on tiny models: the compressed-tensors checkpoint loads in transformers
and matches our simulated W8A8; the Q8_0 GGUF holds the smoothed weights; reports are complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

from aqrecipe.calibration import CalibrationSpec  # noqa: E402
from aqrecipe.errors import RecipeError  # noqa: E402
from aqrecipe.apply.smoothquant import run_smoothquant  # noqa: E402

CHUNKS, CONTEXT = 4, 64


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    from helpers_models import CORPUS

    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n".join(CORPUS * 3), encoding="utf-8")
    return path


def _spec(text_file: Path) -> CalibrationSpec:
    return CalibrationSpec(source="text", path=str(text_file), samples=8, seq_len=32, enforce_sample_range=False)


def _run(model_dir, text_file, tmp_path, section, name="out"):
    dest = tmp_path / name
    result = run_smoothquant(section, str(model_dir), _spec(text_file), tmp_path / "work", dest,
                             eval_chunks=CHUNKS, eval_context=CONTEXT, eval_text=text_file)
    return result, dest


def _ppl_with_transformers(folder: Path, text_file: Path) -> float:
    from aqrecipe.evaluate import TorchBackend, evaluate

    backend = TorchBackend(folder)
    layer = backend._model.model.layers[0].self_attn.q_proj
    assert getattr(layer, "quantization_scheme", None) is not None  # compressed-tensors took over the linears
    return evaluate(backend, text=text_file, chunks=CHUNKS, context=CONTEXT).perplexity_quantized


@pytest.mark.parametrize("acts", ["dynamic-per-token", "static-per-tensor"])
def test_compressed_tensors_checkpoint_loads_and_matches_simulation(tiny_llama_dir, text_file, tmp_path, acts):
    from safetensors import safe_open

    result, dest = _run(tiny_llama_dir, text_file, tmp_path,
                        {"alpha": 0.5, "activations": {"type": acts}, "output": {"type": "compressed-tensors"}})
    assert result.equivalence_max_rel_logit_diff < 1e-4
    qc = json.loads((dest / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "int-quantized" and qc["quant_method"] == "compressed-tensors"
    group = qc["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "channel" and group["input_activations"]["dynamic"] == (acts.startswith("dyn"))
    assert (dest / "tokenizer.json").is_file()
    with safe_open(str(dest / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        w = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
        s = f.get_tensor("model.layers.0.self_attn.q_proj.weight_scale")
        assert w.dtype == np.int8 and w.shape == (64, 64) and s.dtype == np.float32 and s.shape == (64, 1)
        assert np.abs(w).max(axis=1).tolist() == [127] * 64  # per-row scale = max|w| / 127
        norm = f.get_tensor("model.layers.0.input_layernorm.weight")
    has_input_scale = "model.layers.0.self_attn.q_proj.input_scale" in keys
    assert has_input_scale == (acts == "static-per-tensor")
    from safetensors import safe_open as so

    with so(str(tiny_llama_dir / "model.safetensors"), "np") as f:
        orig = f.get_tensor("model.layers.0.input_layernorm.weight")
    scales = _scales(result)["blk.0.attn_norm.smooth_scale"]
    np.testing.assert_allclose(norm, orig / scales, rtol=1e-5)  # the checkpoint holds the smoothed norm
    ppl_hf = _ppl_with_transformers(dest, text_file)
    ppl_sim = result.quality["perplexity_quantized"]
    assert abs(ppl_hf / ppl_sim - 1) < 0.01, (ppl_hf, ppl_sim)


def _scales(result) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(result.scales_path)


def test_auto_alpha_reports_and_scales_file(tiny_qwen2_dir, text_file, tmp_path):
    result, _ = _run(tiny_qwen2_dir, text_file, tmp_path,
                     {"alpha": "auto", "alpha_grid": [0.3, 0.6, 0.9], "auto_samples": 4,
                      "output": {"type": "none"}, "problem_threshold": 1e-12})
    losses = {r["alpha"]: r["calibration_nll"] for r in result.alpha_search}
    assert sorted(losses) == [0.3, 0.6, 0.9] and result.alpha == min(losses, key=losses.get)
    assert result.equivalence_max_rel_logit_diff < 1e-4
    arrays = _scales(result)
    act, w, s = (arrays[f"blk.1.ffn_norm.{k}"] for k in ("act_max", "weight_max", "smooth_scale"))
    expected = np.clip(act.astype(np.float64) ** result.alpha / w.astype(np.float64) ** (1 - result.alpha), 1e-5, 1e5)
    np.testing.assert_allclose(s, expected, rtol=1e-5)
    np.testing.assert_allclose(arrays["blk.1.ffn_norm.act_max_smoothed"], act / s, rtol=1e-6)
    g = result.groups[3]
    assert g["group"] == "blk.1.ffn_norm" and g["scale_min"] <= g["scale_median"] <= g["scale_max"]
    assert g["act_outlier_after"] == pytest.approx(float((act / s).max() / np.median(act / s)), rel=1e-5)
    # every decoder linear is measured; with a tiny threshold every one is a listed problem with a hint
    assert len(result.activation_errors) == 14 and len(result.problems) == 14
    assert all(p["suggestion"] for p in result.problems)
    report = json.loads((tmp_path / "work" / "smoothquant_report.json").read_text())
    assert report["alpha"] == result.alpha and report["quality"]["kld_mean"] >= 0


def test_smoothing_lowers_the_outlier_ratio(tiny_llama_dir, text_file, tmp_path):
    result, _ = _run(tiny_llama_dir, text_file, tmp_path, {"alpha": 0.9, "output": {"type": "none"}})
    for g in result.groups:
        assert g["act_outlier_after"] < g["act_outlier_before"]
    smoothed = [(k, v) for k, v in result.activation_errors.items() if "attn_q" in k]
    assert all(after < before for _, (before, after) in smoothed)


def test_q8_0_gguf_holds_the_smoothed_model(tiny_llama_dir, text_file, tmp_path):
    import gguf

    result, dest = _run(tiny_llama_dir, text_file, tmp_path.absolute(),
                        {"alpha": 0.5, "output": {"type": "gguf-q8_0"}}, name="model.gguf")
    reader = gguf.GGUFReader(str(dest))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.1.ffn_up.weight"] == "Q8_0"
    norm = next(t for t in reader.tensors if t.name == "blk.0.ffn_norm.weight")
    from safetensors import safe_open

    with safe_open(str(tiny_llama_dir / "model.safetensors"), "np") as f:
        orig = f.get_tensor("model.layers.0.post_attention_layernorm.weight")
    np.testing.assert_allclose(np.asarray(norm.data), orig / _scales(result)["blk.0.ffn_norm.smooth_scale"], rtol=1e-5)


def test_disabled_smoothing_is_plain_w8a8(tiny_llama_dir, text_file, tmp_path):
    result, _ = _run(tiny_llama_dir, text_file, tmp_path, {"enabled": False, "output": {"type": "none"}})
    assert result.alpha is None and result.groups == () and result.equivalence_max_rel_logit_diff == 0.0
    assert result.quality["kld_mean"] > 0


def test_output_over_a_foreign_path_is_refused(tiny_llama_dir, text_file, tmp_path):
    (tmp_path / "out").write_text("not a model")
    with pytest.raises(Exception, match="not a model folder"):
        _run(tiny_llama_dir, text_file, tmp_path, {"alpha": 0.5})
    assert (tmp_path / "out").read_text() == "not a model"
    with pytest.raises(RecipeError, match="smoothquant.alpha"):
        run_smoothquant({"alpha": 2}, str(tiny_llama_dir), _spec(text_file), tmp_path / "w")


@pytest.mark.slow
def test_demo_smoothing_is_exact_in_float32(demo_model_dir, tmp_path):
    from aqrecipe.models import open_model
    from aqrecipe.smoothquant import SmoothQuantConfig, resolve_groups
    from aqrecipe.apply.smoothquant import smoothed_copy
    from aqrecipe.smoothquant.torch_model import load_float_model, max_relative_logit_diff, window_logits

    src = open_model(demo_model_dir)
    groups = resolve_groups(src, SmoothQuantConfig())
    rng = np.random.default_rng(0)
    scales = {g.key: rng.uniform(0.1, 10.0, size=src.arch.hidden).astype(np.float32) for g in groups}
    model = load_float_model(src)
    ids = rng.integers(0, src.arch.vocab, size=(1, 128))
    diff = max_relative_logit_diff(window_logits(model, ids), window_logits(smoothed_copy(model, groups, scales, 0.0), ids))
    assert diff < 1e-4
