"""Mixture-of-experts models (issue 18, first part): merged expert tensors are planned, packed per
expert and read by llama.cpp; mixtures choose llama-quantize's types; rules address roles.

A tiny random Mixtral (8 experts, the count llama.cpp's mixtures bump for) is written by
transformers, converted by llama.cpp's own converter and quantized by aqrecipe; llama.cpp's own
``llama-quantize`` on the F16 GGUF of the same model is the reference for the per-tensor types.
An imatrix made by llama-imatrix is read per expert, GGUF and legacy .dat alike (computing one by
calibration, other MoE families and the planner: tests/test_moe_calibration.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from aqrecipe.cli.commands import main  # noqa: E402
from aqrecipe.optional import available  # noqa: E402

pytestmark = pytest.mark.slow
N_EXPERT = 8


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moe_models import build_moe

    return build_moe("mixtral", tmp_path_factory.mktemp("mixtral") / "hf")


def _types(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def test_experts_are_merged_3d_tensors_and_routers_stay_f32(mixtral: Path) -> None:
    from aqrecipe.models import open_model
    from aqrecipe.plan.compiler import is_quantizable

    source = open_model(mixtral)
    assert source.arch.n_expert == N_EXPERT and source.arch.is_moe
    shapes = {t.gguf_name: t.shape for t in source.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == (N_EXPERT, 512, 256)
    assert shapes["blk.0.ffn_down_exps.weight"] == (N_EXPERT, 256, 512)
    assert is_quantizable("blk.0.ffn_down_exps.weight", shapes["blk.0.ffn_down_exps.weight"])
    assert not is_quantizable("blk.0.ffn_gate_inp.weight", shapes["blk.0.ffn_gate_inp.weight"])


@pytest.mark.llamacpp
@pytest.mark.skipif(not available("llama_cpp"), reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("file_type", ["Q4_K_M", "Q3_K_M", "Q2_K"])
def test_mixture_types_equal_llama_quantize_and_the_file_loads(mixtral: Path, tmp_path: Path, file_type: str) -> None:
    """The 8-expert bumps (attn_v / attn_k Q8_0, attn_output Q5_K, ...) as llama-quantize chooses them."""
    from llamacpp_build import llamacpp_tools

    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    f16, ours, theirs = tmp_path / "f16.gguf", tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    assert main(["quantize", str(mixtral), "--type", "F16", "-o", str(f16), "--no-eval", "-q"]) == 0
    if file_type == "Q2_K":  # apply, to switch the coherence check (its own evaluation) off
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"version: 1\nmodel: {mixtral}\nquantization:\n  mixture: Q2_K\ncoherence:\n"
                          "  enabled: false\nevaluation:\n  enabled: false\n", encoding="utf-8")
        assert main(["apply", str(recipe), "-o", str(ours), "-q"]) == 0
    else:
        assert main(["quantize", str(mixtral), "--type", file_type, "-o", str(ours), "--no-eval", "-q"]) == 0
    tool = llamacpp_tools()["llama-quantize"]
    proc = subprocess.run([str(tool), str(f16), str(theirs), file_type, "2"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mine, ref = _types(ours), _types(theirs)
    assert mine == ref
    assert mine["blk.0.ffn_gate_inp.weight"] == "F32"
    if file_type != "Q2_K":
        assert mine["blk.0.attn_v.weight"] == mine["blk.0.attn_k.weight"] == "Q8_0"
    backend = LlamaCppBackend(ours, n_ctx=64)
    try:
        logits = backend.logits(list(range(10, 74)))
    finally:
        backend.close()
    assert logits.shape == (64, 49152) and np.isfinite(logits).all()


def test_role_rules_address_experts_attention_and_routers(mixtral: Path, tmp_path: Path) -> None:
    from aqrecipe.plan.from_recipe import plan_from_recipe
    from aqrecipe.recipe import load_recipe

    recipe = tmp_path / "roles.yaml"
    recipe.write_text(f"""version: 1
model: {mixtral}
quantization:
  mixture: Q4_K_M
  rules:
    - role: experts
      type: Q2_K
    - role: attention
      type: Q6_K
    - match: blk.1.ffn_down_exps.weight
      type: Q3_K
    - role: router
      type: Q8_0
""", encoding="utf-8")
    plan = plan_from_recipe(load_recipe(recipe))
    types = {e.gguf_name: e.type for e in plan.entries}
    assert types["blk.0.ffn_gate_exps.weight"] == types["blk.0.ffn_down_exps.weight"] == "Q2_K"
    assert types["blk.1.ffn_down_exps.weight"] == "Q3_K"  # a name beats a role
    assert types["blk.0.attn_q.weight"] == types["blk.1.attn_output.weight"] == "Q6_K"
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"  # routers are never quantized
    assert any("router" in str(u) for u in plan.to_dict()["unused_rules"])  # reported, not silently dropped


def _expert_imatrix(source, rng: np.random.Generator):
    """An imatrix with one row and one count per expert for each merged-expert tensor (expert 3 unseen)."""
    from aqrecipe.imatrix.check import expected_matrices
    from aqrecipe.imatrix.data import ImatrixData, ImatrixEntry

    entries = {}
    for name, (n_mat, n_cols) in expected_matrices(source).items():
        counts = np.full(n_mat, 512.0, dtype=np.float32)
        sums = (rng.lognormal(0, 1.5, size=(n_mat, n_cols)) * 512).astype(np.float32)
        if n_mat > 1:
            counts[3], sums[3] = 0, 0
        entries[name] = ImatrixEntry(sums, counts)
    return ImatrixData(entries, ["test"], 4, 512)


def test_per_expert_imatrix_gguf_and_legacy_dat_give_the_same_file(mixtral: Path, tmp_path: Path) -> None:
    """llama-imatrix's two formats: GGUF (a row and a count per expert) and .dat (n_cols x n_expert values,
    expert-major, one call count) are read alike; each expert is packed with its own row; the unseen
    expert neither fails nor writes NaN."""
    from aqrecipe.imatrix.io import save_imatrix
    from aqrecipe.models import open_model

    source = open_model(mixtral)
    data = _expert_imatrix(source, np.random.default_rng(0))
    as_gguf, as_dat = tmp_path / "im.gguf", tmp_path / "im.dat"
    save_imatrix(data, as_gguf)
    save_imatrix(data, as_dat)
    outs = {}
    for label, imatrix in (("gguf", as_gguf), ("dat", as_dat), ("none", None)):
        dest = tmp_path / f"{label}.gguf"
        args = ["quantize", str(mixtral), "--type", "Q4_K_M", "-o", str(dest), "--no-eval", "-q"]
        assert main(args + (["--imatrix", str(imatrix)] if imatrix else [])) == 0
        outs[label] = dest.read_bytes()
    assert outs["gguf"] == outs["dat"]
    assert outs["gguf"] != outs["none"]


def test_per_expert_importance_packs_each_expert_with_its_own_row(mixtral: Path, tmp_path: Path) -> None:
    from aqrecipe.models import open_model
    from aqrecipe.output.pack import expert_rows, pack_entry
    from aqrecipe.plan.from_recipe import plan_from_recipe
    from aqrecipe.quant import codecs
    from aqrecipe.recipe import load_recipe

    source = open_model(mixtral)
    recipe = tmp_path / "q4k.yaml"
    recipe.write_text(f"version: 1\nmodel: {mixtral}\nquantization:\n  default: Q4_K\n", encoding="utf-8")
    plan = plan_from_recipe(load_recipe(recipe))
    entry = next(e for e in plan.entries if e.gguf_name == "blk.0.ffn_down_exps.weight")
    imp = np.random.default_rng(1).lognormal(0, 2, size=(N_EXPERT, entry.shape[-1])).astype(np.float32)
    packed = pack_entry(source, entry, imp)
    w = source.read_for_gguf(entry.gguf_name)
    for e in (0, 5):
        rows = slice(e * entry.shape[1], (e + 1) * entry.shape[1])
        np.testing.assert_array_equal(packed[rows], codecs.quantize(w[e], "Q4_K", imp[e]))
    with pytest.raises(Exception, match="one row of"):
        expert_rows(imp[:3], entry.shape)
