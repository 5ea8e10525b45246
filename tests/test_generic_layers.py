"""The torch stages on every dense family (issue 15, item 3): nothing in them knows a family.

For a tiny random model of each family (tests/families.py: the published configs, shrunk; float32
here so the comparisons are exact), the layer-by-layer calibration runner must reproduce the
model's own full forward pass (Llama 3's rope scaling, Mistral's and Gemma's sliding windows,
Gemma 2's attention softcapping, Gemma's (1 + w) norms and scaled embedding, Qwen3 / Gemma 3
QK-norm, Phi-3's fused projections), its statistics must be keyed by the GGUF tensors llama.cpp
writes, SmoothQuant's groups must be exact equivalences on the module graph, and super-weight
detection must run. The torch stages refuse GGUF input and decoders they cannot run, naming the stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from families import FAMILIES, SLIDING_WINDOW, build_family  # noqa: E402

TEST_WINDOW = 64  # tokens per window: longer than the sliding windows, so local attention matters

from aqrecipe.calibration.observers import LinearObserver  # noqa: E402
from aqrecipe.calibration.runner import RunnerOptions, run_calibration  # noqa: E402
from aqrecipe.errors import UnsupportedArchitectureError  # noqa: E402
from aqrecipe.models import open_model  # noqa: E402

OPTS = RunnerOptions(device="cpu", batch_tokens=2 * TEST_WINDOW)  # 2 samples per batch, the last one alone
SAMPLES = 3
#: What the runner's final hidden state may differ from the full forward by (float32; measured 0.0)
FORWARD_TOLERANCE = 1e-5
#: SmoothQuant must leave the float logits equal up to this relative difference
SMOOTH_TOLERANCE = 1e-4

#: GGUF roles of each family's decoder linears (what llama.cpp's converter names them)
LINEAR_ROLES = {
    "phi3": {"attn_qkv", "attn_output", "ffn_up", "ffn_down"},  # fused qkv_proj and gate_up_proj
}
DEFAULT_ROLES = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
#: The HF module each family's ffn smoothing norm is (Gemma: the pre-feedforward norm)
FFN_NORM = {"gemma2": "pre_feedforward_layernorm", "gemma3": "pre_feedforward_layernorm"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    dirs = {name: build_family(name, root / name, dtype="float32") for name in FAMILIES}
    # Mistral's published window (4096) is longer than any test window; the torch side must honour a
    # short one (llama.cpp implements no sliding window for Mistral, so only transformers reads it)
    config = json.loads((dirs["mistral"] / "config.json").read_text())
    config["sliding_window"] = SLIDING_WINDOW
    (dirs["mistral"] / "config.json").write_text(json.dumps(config, indent=2))
    return dirs


def _windows(source, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    vocab = min(source.arch.vocab, 900)  # ids every family's tokenizer and embedding have
    return np.random.default_rng(seed).integers(3, vocab, size=(samples, TEST_WINDOW))


def _reference_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


class FinalHidden(LinearObserver):
    """Keeps the decoder's final normed hidden states the runner computes (tied heads included)."""

    key = "final-hidden"
    wants_final = True

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def wants(self, gguf_name: str) -> bool:
        return False

    def observe_final(self, x: np.ndarray) -> None:
        self.batches.append(x.copy())


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_by_layer_equals_the_full_forward(family_dirs, family) -> None:
    source = open_model(family_dirs[family])
    windows = _windows(source)
    final = FinalHidden()
    result = run_calibration(source, windows, options=OPTS, observers=[final], quiet=True)
    model = _reference_model(family_dirs[family])
    sums: dict[str, np.ndarray] = {}

    def hook(name):
        def fn(_mod, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0).numpy()
        return fn

    handles = [mod.register_forward_hook(hook(source.gguf_names_of(n + ".weight")[0]))
               for n, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and n.startswith("model.layers.")]
    with torch.no_grad():
        out = model(torch.from_numpy(windows), output_hidden_states=True)
    for h in handles:
        h.remove()
    want = out.hidden_states[-1].reshape(-1, out.hidden_states[-1].shape[-1]).numpy()
    got = np.concatenate(final.batches)
    diff = float(np.abs(got - want).max())
    print(f"{family}: max |layer-by-layer - full forward| = {diff:.3g} (values up to {np.abs(want).max():.3g})")
    assert diff <= FORWARD_TOLERANCE
    for name, s2 in sums.items():  # and every linear saw the inputs of the full pass
        np.testing.assert_allclose(result.stats[name].sum2, s2, rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_statistics_are_keyed_by_gguf_names(family_dirs, family) -> None:
    source = open_model(family_dirs[family])
    windows = _windows(source, samples=2)
    result = run_calibration(source, windows, options=OPTS, quiet=True)
    roles = LINEAR_ROLES.get(family, DEFAULT_ROLES)
    want = {f"blk.{i}.{r}.weight" for i in range(source.arch.n_layers) for r in roles}
    if not source.arch.tied_embeddings:
        want.add("output.weight")
    assert set(result.stats) == want
    gguf_names = {t.gguf_name for t in source.tensors}
    assert set(result.stats) <= gguf_names  # every key is a tensor of the GGUF llama.cpp converts to
    assert all(st.count == windows.size for st in result.stats.values())
    for layer, ranges in result.down_proj_max_out.items():  # the super-weight observer too
        assert ranges.shape == (source.arch.hidden,) and f"blk.{layer}.ffn_down.weight" in result.stats
    if family == "phi3":  # fused q/k/v: one input, hidden wide; fused gate/up: one tensor, 2 x ffn rows
        assert result.stats["blk.0.attn_qkv.weight"].sum2.shape == (source.arch.hidden,)
        shape = source.tensor("blk.0.ffn_up.weight").shape
        assert shape[0] == 2 * source.config["intermediate_size"]


@pytest.mark.parametrize("family", FAMILIES)
def test_smoothquant_groups_are_exact_equivalences(family_dirs, family) -> None:
    from aqrecipe.apply.smoothquant import smoothed_copy
    from aqrecipe.smoothquant import SmoothQuantConfig, resolve_groups
    from aqrecipe.smoothquant.graph import check_groups
    from aqrecipe.smoothquant.mappings import norm_offset
    from aqrecipe.smoothquant.torch_model import load_float_model, max_relative_logit_diff, window_logits

    source = open_model(family_dirs[family])
    model = load_float_model(source)
    offset = norm_offset(source.config)
    assert offset == (1.0 if family.startswith("gemma") else 0.0)
    windows = _windows(source, samples=2)
    groups, skipped = check_groups(model, resolve_groups(source, SmoothQuantConfig()), offset, windows[:1, :8])
    assert skipped == [] and len(groups) == 2 * source.arch.n_layers
    ffn = next(g for g in groups if g.kind == "ffn" and g.layer == 0)
    assert ffn.norm == f"model.layers.0.{FFN_NORM.get(family, 'post_attention_layernorm')}"
    rng = np.random.default_rng(1)
    scales = {g.key: rng.uniform(0.05, 20.0, size=source.arch.hidden).astype(np.float32) for g in groups}
    smoothed = smoothed_copy(model, groups, scales, offset)
    rel = max_relative_logit_diff(window_logits(model, windows), window_logits(smoothed, windows))
    print(f"{family}: SmoothQuant max relative logit difference {rel:.3g}")
    assert rel <= SMOOTH_TOLERANCE
    # the test can fail: the transform with the wrong norm offset is no equivalence
    wrong = smoothed_copy(model, groups, scales, 1.0 - offset)
    assert max_relative_logit_diff(window_logits(model, windows), window_logits(wrong, windows)) > 1e-2


def test_gemma_post_attention_norm_is_no_smoothing_norm(family_dirs) -> None:
    """Gemma 2's post_attention_layernorm output goes to the residual: a group on it is skipped."""
    from aqrecipe.smoothquant import SmoothQuantConfig, resolve_groups
    from aqrecipe.smoothquant.graph import check_groups
    from aqrecipe.smoothquant.torch_model import load_float_model

    source = open_model(family_dirs["gemma2"])
    cfg = SmoothQuantConfig.from_dict({"mappings": {"type": "explicit", "groups": [
        {"norm": "model.layers.0.post_attention_layernorm", "linears": ["ffn_gate", "ffn_up"]},
        {"norm": "blk.1.ffn_norm", "linears": ["ffn_gate", "ffn_up"]}]}})
    groups = resolve_groups(source, cfg)
    assert [g.norm_gguf for g in groups] == ["blk.0.post_attention_norm.weight", "blk.1.ffn_norm.weight"]
    kept, skipped = check_groups(load_float_model(source), groups, 1.0, _windows(source, samples=1)[:, :8])
    assert [g.key for g in kept] == ["blk.1.ffn_norm"]
    assert [s.group for s in skipped] == ["blk.0.post_attention_norm"]
    assert "does not read" in skipped[0].reason


@pytest.mark.parametrize("family", ["llama3", "gemma2"])
def test_q8_0_gguf_of_the_smoothed_model_goes_through_the_converter(family_dirs, family, tmp_path) -> None:
    """The smoothed tensors reach the GGUF as llama.cpp's converter makes them (q/k order, Gemma's + 1)."""
    import gguf

    from aqrecipe.apply.smoothquant import smoothed_copy
    from aqrecipe.output.w8a8 import write_q8_0_gguf
    from aqrecipe.quant.codecs import dequantize
    from aqrecipe.smoothquant import SmoothQuantConfig, resolve_groups
    from aqrecipe.smoothquant.mappings import norm_offset
    from aqrecipe.smoothquant.torch_model import load_float_model

    source = open_model(family_dirs[family])
    model = load_float_model(source)
    groups = resolve_groups(source, SmoothQuantConfig())
    rng = np.random.default_rng(2)
    scales = {g.key: rng.uniform(0.5, 2.0, size=source.arch.hidden).astype(np.float32) for g in groups}
    offset = norm_offset(source.config)
    smoothed = smoothed_copy(model, groups, scales, offset)
    write_q8_0_gguf(smoothed, source, tmp_path / "m.gguf", groups)
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    norm = smoothed.model.layers[0].input_layernorm.weight.detach().numpy()
    np.testing.assert_allclose(np.asarray(tensors["blk.0.attn_norm.weight"].data), norm + offset, rtol=1e-6)
    q = smoothed.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    t = tensors["blk.0.attn_q.weight"]
    got = dequantize(np.asarray(t.data), t.tensor_type.name, q.shape)
    if family == "llama3":  # llama.cpp's q row order, computed here (in the test only)
        heads = source.arch.n_head
        q = q.reshape(heads, 2, q.shape[0] // heads // 2, q.shape[1]).swapaxes(1, 2).reshape(q.shape)
    assert t.tensor_type.name == "Q8_0"
    np.testing.assert_allclose(got, q, atol=float(np.abs(q).max()) / 100)
    assert np.abs(got - q).max() < np.abs(model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
                                          - q).max()  # it is the smoothed weight, not the original


@pytest.mark.parametrize("family", FAMILIES)
def test_super_weight_detection_runs(family_dirs, family) -> None:
    from aqrecipe.importance import DetectSpec, analyze_importance

    source = open_model(family_dirs[family])
    spec = DetectSpec(type="combined", samples=2, seq_len=TEST_WINDOW, gradient_samples=1)
    found = analyze_importance(source, spec, windows=_windows(source, samples=2))
    n = source.arch.n_layers
    assert sorted(k for k in found.arrays if k.startswith("down_proj.max_out.")) == \
        sorted(f"down_proj.max_out.{i}" for i in range(n))
    assert found.calibration_dataset_info["gradient_windows"] == 1
    assert {f"blk.{i}.ffn_down.weight" for i in range(n)} <= set(found.tensor_scores)
    for sw in found.super_weights:  # random weights rarely hold one; when found, it names real tensors
        assert sw.tensor in {t.gguf_name for t in source.tensors}


# --- what the torch stages refuse ------------------------------------------------------------------
class _GgufLike:
    """A source without an HF folder (what GGUF input looks like to the torch stages)."""

    def __init__(self, source) -> None:
        self._source = source
        self.hf_folder = None
        self.path = Path("model.gguf")

    def __getattr__(self, name):
        return getattr(self._source, name)


def test_gguf_input_is_refused_naming_the_stage(family_dirs) -> None:
    from aqrecipe.calibration.hf_model import require_hf_folder
    from aqrecipe.importance import DetectSpec, analyze_importance

    gguf_source = _GgufLike(open_model(family_dirs["llama3"]))
    with pytest.raises(UnsupportedArchitectureError, match="^imatrix calibration needs the Hugging Face folder") as err:
        run_calibration(gguf_source, np.zeros((1, 8), np.int64), options=OPTS, quiet=True)
    assert "--imatrix FILE made by llama-imatrix" in err.value.hint
    with pytest.raises(UnsupportedArchitectureError, match="^super-weight detection needs"):
        analyze_importance(gguf_source, DetectSpec(samples=2, seq_len=16), windows=np.zeros((2, 16), np.int64))
    with pytest.raises(UnsupportedArchitectureError, match="^SmoothQuant needs") as err:
        require_hf_folder(gguf_source, "SmoothQuant")
    assert "Hugging Face folder" in err.value.hint


def test_a_decoder_without_layers_is_refused_naming_the_stage() -> None:
    from aqrecipe.calibration.hf_model import decoder_of

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Module()
            self.model.embed_tokens = torch.nn.Embedding(4, 2)

    with pytest.raises(UnsupportedArchitectureError, match="imatrix calibration cannot run Encoder layer by layer: "
                                                           "its decoder has no model.layers"):
        decoder_of(Encoder(), "imatrix calibration")
