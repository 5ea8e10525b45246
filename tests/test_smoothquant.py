"""SmoothQuant: math (hand-computed), recipe section, mappings, fake-quant, float equivalence."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest

from aqrecipe.errors import RecipeError

from aqrecipe.smoothquant import (SCHEMA_FRAGMENT, SmoothQuantConfig, SmoothQuantError, resolve_groups,
                                  smooth_norm_weight, smoothing_scales, weight_column_max)


# --- math -------------------------------------------------------------------------------------
def test_smoothing_scales_hand_values():
    act = np.array([4.0, 1.0, 0.0, 9.0], dtype=np.float32)
    w = np.array([1.0, 4.0, 2.0, 0.0], dtype=np.float32)
    # alpha 0.5: sqrt(4)/sqrt(1)=2, sqrt(1)/sqrt(4)=0.5, dead channel -> 1, zero weight -> 1
    np.testing.assert_allclose(smoothing_scales(act, w, 0.5), [2.0, 0.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(smoothing_scales(act, w, 1.0), [4.0, 1.0, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(smoothing_scales(act, w, 0.0), [1.0, 0.25, 1.0, 1.0], rtol=1e-6)
    # clamped
    assert smoothing_scales(np.array([1e30]), np.array([1e-30]), 0.5)[0] == pytest.approx(1e5)
    with pytest.raises(ValueError):
        smoothing_scales(act, w, 1.5)


def test_weight_column_max_over_all_linears():
    a = np.array([[1.0, -5.0], [2.0, 0.5]])
    b = np.array([[-3.0, 1.0]])
    np.testing.assert_array_equal(weight_column_max([a, b]), [3.0, 5.0])


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_norm_and_columns_transform_is_an_identity(offset):
    """RMSNorm (w or gemma's 1 + w) followed by a linear: smoothing leaves the output unchanged."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8))
    w_norm = rng.normal(size=8)
    W = rng.normal(size=(3, 8))
    s = rng.uniform(0.1, 10.0, size=8)
    normed = x / np.sqrt((x**2).mean(axis=1, keepdims=True) + 1e-6)
    y = (normed * (offset + w_norm)) @ W.T
    w2 = smooth_norm_weight(w_norm, s, offset).astype(np.float64)
    y2 = (normed * (offset + w2)) @ (W * s[None, :]).T
    np.testing.assert_allclose(y2, y, rtol=1e-5, atol=1e-5)
    if offset == 1.0:  # hand value: (1 + 0.5) / 2 - 1
        assert smooth_norm_weight(np.array([0.5]), np.array([2.0]), 1.0)[0] == pytest.approx(-0.25)


# --- recipe section ---------------------------------------------------------------------------
def test_schema_fragment_is_valid_and_closed():
    jsonschema.Draft202012Validator.check_schema(SCHEMA_FRAGMENT)
    assert SCHEMA_FRAGMENT["additionalProperties"] is False


@pytest.mark.parametrize("bad, code, path", [
    ({"alpha": 1.5}, "R112", "$.smoothquant.alpha"), ({"alpha": -0.1}, "R112", "$.smoothquant.alpha"),
    ({"alpha": "best"}, "R112", "$.smoothquant.alpha"), ({"alhpa": 0.5}, "R101", "$.smoothquant.alhpa"),
    ({"activations": {"type": "per-channel"}}, "R112", "$.smoothquant.activations.type"),
    ({"mappings": {"type": "explicit"}}, "R102", "$.smoothquant.mappings.groups"),
    ({"output": {"path": "x"}}, "R102", "$.smoothquant.output.type")])
def test_invalid_sections_are_rejected(bad, code, path):
    # the one section mechanism (aqrecipe.recipe.sections): the recipe's codes and paths
    with pytest.raises(RecipeError) as exc:
        SmoothQuantConfig.from_dict(bad)
    assert exc.value.hint and [(i.code, i.json_path) for i in exc.value.issues] == [(code, path)]


def test_section_round_trip():
    d = {"alpha": "auto", "alpha_grid": [0.4, 0.6], "mappings": {"type": "explicit", "groups": [
        {"norm": "blk.*.attn_norm", "linears": ["attn_q", "attn_k", "attn_v"], "alpha": 0.6}]},
         "activations": {"type": "static-per-tensor"}, "output": {"type": "gguf-q8_0", "path": "o.gguf"},
         "problem_threshold": 0.01}
    cfg = SmoothQuantConfig.from_dict(d)
    assert cfg.is_auto and cfg.groups[0].alpha == 0.6 and cfg.activations == "static-per-tensor"
    assert SmoothQuantConfig.from_dict(cfg.to_dict()) == cfg
    assert SmoothQuantConfig.from_dict({}) == SmoothQuantConfig()


# --- mappings ---------------------------------------------------------------------------------
def test_auto_mappings_llama(tiny_llama_dir):
    from aqrecipe.models import open_model

    groups = resolve_groups(open_model(tiny_llama_dir), SmoothQuantConfig())
    assert [g.key for g in groups] == ["blk.0.attn_norm", "blk.0.ffn_norm", "blk.1.attn_norm", "blk.1.ffn_norm"]
    assert groups[0].linears_gguf == ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight")
    assert groups[1].linears == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")


def test_overrides_and_explicit_mappings(tiny_llama_dir):
    from aqrecipe.models import open_model

    src = open_model(tiny_llama_dir)
    cfg = SmoothQuantConfig.from_dict({"mappings": {"type": "auto", "overrides": [
        {"norm": "model.layers.1.post_attention_layernorm", "alpha": 0.9}]}})
    assert [g.alpha for g in resolve_groups(src, cfg)] == [None, None, None, 0.9]
    cfg = SmoothQuantConfig.from_dict({"mappings": {"type": "explicit", "groups": [
        {"norm": "blk.*.attn_norm", "linears": ["attn_q", "self_attn.k_proj"], "alpha": 0.7}]}})
    groups = resolve_groups(src, cfg)
    assert [(g.key, g.linears_gguf, g.alpha) for g in groups] == [
        ("blk.0.attn_norm", ("blk.0.attn_k.weight", "blk.0.attn_q.weight"), 0.7),
        ("blk.1.attn_norm", ("blk.1.attn_k.weight", "blk.1.attn_q.weight"), 0.7)]
    for bad in ({"norm": "blk.*.nonorm", "linears": ["attn_q"]}, {"norm": "output_norm", "linears": ["attn_q"]},
                {"norm": "blk.0.attn_norm", "linears": ["nothing"]}):
        with pytest.raises(SmoothQuantError):
            resolve_groups(src, SmoothQuantConfig.from_dict({"mappings": {"type": "explicit", "groups": [bad]}}))
    with pytest.raises(SmoothQuantError, match="matches no smoothed norm"):
        resolve_groups(src, SmoothQuantConfig.from_dict(
            {"mappings": {"type": "auto", "overrides": [{"norm": "blk.7.attn_norm", "alpha": 0.5}]}}))


def test_moe_models_smooth_attention_only(tiny_llama_dir):
    from aqrecipe.models import open_model

    import dataclasses

    class Moe:  # the source with 4 experts per layer: everything else delegated
        def __init__(self, src):
            self._src, self.arch = src, dataclasses.replace(src.arch, n_expert=4)

        def __getattr__(self, name):
            return getattr(self._src, name)

    assert {g.kind for g in resolve_groups(Moe(open_model(tiny_llama_dir)), SmoothQuantConfig())} == {"attn"}


# --- fake quantization ------------------------------------------------------------------------
def test_weight_int8_per_row_hand_values():
    torch = pytest.importorskip("torch")
    from aqrecipe.smoothquant.fakequant import quantize_weight_int8

    w = torch.tensor([[127.0, -63.4, 0.6], [0.0, 0.0, 0.0], [2.54, 1.0, -0.5]])
    q, scale = quantize_weight_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (3, 1)
    assert q[0].tolist() == [127, -63, 1] and q[1].tolist() == [0, 0, 0]
    assert scale[0, 0] == 1.0 and scale[1, 0] == 1.0 and scale[2, 0] == pytest.approx(0.02)
    assert q[2].tolist() == [127, 50, -25]


def test_activation_fake_quant_hand_values():
    torch = pytest.importorskip("torch")
    from aqrecipe.smoothquant.fakequant import fake_quant_per_token, fake_quant_static

    x = torch.tensor([[1.27, 0.004, -0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = fake_quant_per_token(x)  # scale 0.01: 0.004 -> 0, -0.5 -> -50 * 0.01
    torch.testing.assert_close(y, torch.tensor([[1.27, 0.0, -0.5], [0.0, 0.0, 0.0]], dtype=torch.float64))
    z = fake_quant_static(torch.tensor([3.0, -3.0, 0.126]), 0.01)  # clamped to [-128, 127]
    torch.testing.assert_close(z, torch.tensor([1.27, -1.28, 0.13]))


# --- equivalence on real HF models ------------------------------------------------------------
@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_smoothing_keeps_float_logits(which, request):
    pytest.importorskip("torch")
    from aqrecipe.models import open_model
    from aqrecipe.apply.smoothquant import smoothed_copy
    from aqrecipe.smoothquant.torch_model import load_float_model, max_relative_logit_diff, window_logits

    src = open_model(request.getfixturevalue(which))
    groups = resolve_groups(src, SmoothQuantConfig())
    rng = np.random.default_rng(1)
    scales = {g.key: rng.uniform(0.05, 20.0, size=src.arch.hidden).astype(np.float32) for g in groups}
    model = load_float_model(src)
    ids = rng.integers(0, src.arch.vocab, size=(2, 48))
    smoothed = smoothed_copy(model, groups, scales, 0.0)
    assert max_relative_logit_diff(window_logits(model, ids), window_logits(smoothed, ids)) < 1e-4
    # and the weights really changed (the test could fail)
    assert not np.allclose(smoothed.model.layers[0].input_layernorm.weight.detach().numpy(),
                           model.model.layers[0].input_layernorm.weight.detach().numpy())
    # a wrong group (o_proj does not read attn_norm) breaks the equivalence
    bad = [type(groups[0])(**{**groups[0].__dict__, "linears": groups[0].linears + ("model.layers.0.mlp.gate_proj",)})]
    broken = smoothed_copy(model, bad, scales, 0.0)
    assert max_relative_logit_diff(window_logits(model, ids), window_logits(broken, ids)) > 1e-3


# --- import hygiene --------------------------------------------------------------------
def test_import_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, aqrecipe.smoothquant; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
