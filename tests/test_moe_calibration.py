"""Mixture-of-experts models end to end (issue 18): Mixtral, Qwen3-MoE and DeepSeek-V3 (first dense
layer, shared expert, grouped sigmoid routing, MLA attention), tiny and random, from their published
configs (tests/moe_models.py).

- the F16 GGUF made by llama.cpp's converter gives transformers' logits in llama.cpp;
- calibration collects statistics per expert from the tokens routed to it, and they agree with
  llama-imatrix's own on the same tokens (counts per expert, mean x^2 per column); llama-quantize
  takes the imatrix we write; ``all_experts`` gives every expert every token;
- an expert no token reaches is reported and weighted like its tensor's seen experts (no NaN);
- apply with a computed imatrix and the planner writes a file llama.cpp runs;
- mixture types equal llama-quantize's; the MoE 1.58-bit preset compiles and applies.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from moe_models import MOE_FAMILIES, N_EXPERT, build_moe, moe_config  # noqa: E402

from aqrecipe.cli.commands import main  # noqa: E402
from aqrecipe.optional import available  # noqa: E402

pytestmark = pytest.mark.slow


def llamacpp(test):
    """A test that runs llama.cpp (the library, or its tools built by tests/llamacpp_build.py)."""
    skip = pytest.mark.skipif(not available("llama_cpp"), reason="llama-cpp-python is not installed")
    return pytest.mark.llamacpp(skip(test))


FAMILIES = tuple(MOE_FAMILIES)
PRESET = Path(__file__).resolve().parent.parent / "recipes" / "presets" / "moe-dynamic-1.58bit.yaml"
SEQ = 64  # tokens per calibration window (the tiny models' contexts are short)


class MoeRun:
    """One family's tiny model and the files made from it, each made once."""

    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root = name, root
        self.folder = build_moe(name, root / "hf")
        self.top_k = int(moe_config(name)["num_experts_per_tok"])
        self._files: dict[str, Path] = {}

    def gguf(self, file_type: str) -> Path:
        if file_type not in self._files:
            dest = self.root / f"{file_type}.gguf"
            assert main(["quantize", str(self.folder), "--type", file_type, "-o", str(dest), "--no-eval", "-q"]) == 0
            self._files[file_type] = dest
        return self._files[file_type]

    def imatrix(self, *extra: str) -> Path:
        """``imatrix compute --json`` (128 windows x 64 tokens, once per flags) -> the file."""
        out = self.root / f"imatrix{''.join(extra)}.gguf"
        if not out.exists():
            args = ["imatrix", "compute", str(self.folder), "-o", str(out), "--samples", "128", "--seq-len",
                    str(SEQ), "--json", *extra]
            assert main(args) == 0
        return out


@pytest.fixture(scope="module", params=FAMILIES)
def moe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> MoeRun:
    return MoeRun(request.param, tmp_path_factory.mktemp(request.param))


def _tools() -> dict[str, Path]:
    from llamacpp_build import llamacpp_tools

    return llamacpp_tools()


def _text_tokens(gguf_path: Path, text: str) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    return vocab.tokenize(text.encode(), add_bos=False, special=False)


# ---------------------------------------------------------------------------------------------------------


def test_experts_shared_experts_and_routers_by_family(moe: MoeRun) -> None:
    from aqrecipe.models import open_model

    source = open_model(moe.folder)
    names = {t.gguf_name: t.shape for t in source.tensors}
    n = N_EXPERT[moe.name]
    assert source.arch.n_expert == n
    last = source.arch.n_layers - 1
    assert names[f"blk.{last}.ffn_down_exps.weight"][0] == n
    assert f"blk.{last}.ffn_gate_inp.weight" in names
    if moe.name == "deepseek3":  # the first layer dense, a shared expert, MLA
        assert "blk.0.ffn_down.weight" in names and "blk.0.ffn_down_exps.weight" not in names
        assert f"blk.{last}.ffn_down_shexp.weight" in names and f"blk.{last}.attn_kv_a_mqa.weight" in names
    if moe.name == "qwen2moe":  # a shared expert behind its own sigmoid gate, which is never quantized
        from aqrecipe.plan import is_quantizable

        gate = f"blk.{last}.ffn_gate_inp_shexp.weight"
        assert names[f"blk.{last}.ffn_down_shexp.weight"] == (256, 512) and gate in names
        assert not is_quantizable(gate, names[gate]) and is_quantizable(f"blk.{last}.ffn_up_shexp.weight", (512, 256))


@llamacpp
def test_f16_gguf_logits_agree_with_transformers(moe: MoeRun) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from aqrecipe.evaluate.llamacpp import LlamaCppBackend
    from aqrecipe.evaluate.metrics import top1_matches

    model = AutoModelForCausalLM.from_pretrained(moe.folder, dtype=torch.float32, attn_implementation="eager")
    windows = np.random.default_rng(7).integers(0, 49152, size=(6, SEQ))
    backend = LlamaCppBackend(moe.gguf("F16"), n_ctx=SEQ)
    hits = n = 0
    try:
        for window in windows:
            with torch.no_grad():
                ref = model(torch.from_numpy(window[None])).logits[0].numpy()
            got = backend.logits(window.tolist())
            hits += int(top1_matches(ref, got).sum())
            n += len(window)
    finally:
        backend.close()
    print(f"{moe.name}: F16 GGUF top-1 agreement with transformers {hits / n:.4f}")
    assert hits / n >= 0.99


@llamacpp
def test_per_expert_statistics_agree_with_llama_imatrix(moe: MoeRun, tmp_path: Path) -> None:
    """Same tokens through both tools (llama-imatrix on the F32 GGUF, our layer-by-layer pass on the HF
    folder): each expert sees the same tokens (a near-tie may route one or two differently) and each
    column's mean x^2 agrees; llama-quantize accepts the imatrix we compute."""
    from aqrecipe.calibration.data import CalibrationSpec
    from aqrecipe.calibration.runner import run_calibration
    from aqrecipe.formats.corpus import calibration_text
    from aqrecipe.imatrix.check import fit_expert_entries, repeat_per_matrix
    from aqrecipe.imatrix.compute import imatrix_from_result
    from aqrecipe.imatrix.io import load_imatrix
    from aqrecipe.models import open_model

    tools, chunks = _tools(), 32
    f32 = moe.gguf("F32")
    text = tmp_path / "cal.txt"
    text.write_text(calibration_text()[:200_000], encoding="utf-8")
    theirs_path = tmp_path / "llama.imatrix.gguf"
    proc = subprocess.run([str(tools["llama-imatrix"]), "-m", str(f32), "-f", str(text), "-c", str(SEQ),
                           "--chunks", str(chunks), "-t", "2", "-o", str(theirs_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tokens = _text_tokens(f32, text.read_text(encoding="utf-8"))  # the vocabulary adds no BOS
    source = open_model(moe.folder)
    result = run_calibration(source, np.array(tokens[:chunks * SEQ]).reshape(chunks, SEQ), quiet=True)
    ours = imatrix_from_result(result, CalibrationSpec(samples=chunks, seq_len=SEQ, enforce_sample_range=False))
    repeat_per_matrix(ours, source)
    theirs = load_imatrix(theirs_path)
    fit_expert_entries(theirs, source)
    only_theirs = {n for n in set(theirs.entries) - set(ours.entries)}
    assert all("ffn_gate_inp" in n or "attn_k_b" in n for n in only_theirs)  # routers; MLA's k_b (see check.py)
    assert set(ours.entries) - set(theirs.entries) <= {"output.weight"}  # llama-imatrix: --process-output
    experts = 0
    for name in sorted(set(ours.entries) & set(theirs.entries)):
        a, b = ours.entries[name], theirs.entries[name]
        assert a.n_mat == b.n_mat, name
        if "attn_v_b" in name:  # MLA: llama.cpp feeds it each head's attention-weighted latent, we the latent
            assert np.array_equal(a.counts, b.counts), name
            continue
        ia, ib = a.importance().reshape(a.n_mat, -1), b.importance().reshape(b.n_mat, -1)
        if "_exps" in name:
            experts += 1
            assert a.counts.sum() == b.counts.sum() == chunks * SEQ * moe.top_k, name
            assert np.abs(a.counts - b.counts).max() <= max(3, 0.01 * b.counts.max()), (name, a.counts, b.counts)
            assert np.abs(ia - ib).max() <= 0.1 * np.abs(ib).max(), name
        else:
            assert np.array_equal(a.counts, b.counts), name
            assert np.abs(ia - ib).max() <= 1e-2 * np.abs(ib).max(), name
    assert experts >= 3
    mine = moe.imatrix()
    proc = subprocess.run([str(tools["llama-quantize"]), "--imatrix", str(mine), str(moe.gguf("F16")),
                           str(tmp_path / "iq2.gguf"), "IQ2_XXS", "2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]


def test_routed_counts_and_all_experts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Routed: each token counts once in each of its top-k experts, gate/up/down alike. all_experts:
    every expert sees every token, so an expert's gate/up statistics are the layer input's."""
    from aqrecipe.imatrix.io import load_imatrix

    run = MoeRun("qwen3moe", tmp_path)
    n_tokens = 128 * SEQ
    routed = load_imatrix(run.imatrix())
    every = load_imatrix(run.imatrix("--all-experts"))
    assert '"unseen_experts": {}' in capsys.readouterr().out
    for layer in range(2):
        gate, up, down = (f"blk.{layer}.ffn_{r}_exps.weight" for r in ("gate", "up", "down"))
        counts = routed.entries[gate].counts
        assert counts.shape == (N_EXPERT["qwen3moe"],) and counts.sum() == n_tokens * run.top_k
        assert np.array_equal(counts, routed.entries[up].counts) and np.array_equal(counts, routed.entries[down].counts)
        assert (every.entries[gate].counts == n_tokens).all() and (every.entries[down].counts == n_tokens).all()
        rows = every.entries[gate].in_sum2
        np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape), rtol=1e-5)
        assert not np.allclose(every.entries[down].in_sum2[0], every.entries[down].in_sum2[1])
        # the dense tensors of the layer see the same tokens either way
        np.testing.assert_allclose(every.entries[f"blk.{layer}.attn_q.weight"].in_sum2,
                                   routed.entries[f"blk.{layer}.attn_q.weight"].in_sum2, rtol=1e-5)


def test_experts_spread_over_shards_are_named_and_calibrated(tmp_path: Path) -> None:
    """A sharded checkpoint interleaves other tensors between a layer's experts: every expert's HF tensor
    still names its merged GGUF tensor, and calibration collects every expert."""
    from aqrecipe.imatrix.io import load_imatrix
    from aqrecipe.models import open_model
    from aqrecipe.models.tensor_names import hf_expert_of

    folder = build_moe("mixtral", tmp_path / "hf", max_shard_size="20MB")
    assert len(list(folder.glob("*.safetensors"))) > 2
    source = open_model(folder)
    experts = [n for n in json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
               if hf_expert_of(n) is not None]
    assert len(experts) == 2 * 3 * N_EXPERT["mixtral"]
    for name in experts:
        layer, part = name.split(".")[2], name.rsplit(".", 2)[1]
        role = {"w1": "ffn_gate_exps", "w2": "ffn_down_exps", "w3": "ffn_up_exps"}[part]
        assert source.gguf_names_of(name) == (f"blk.{layer}.{role}.weight",), name
    out = tmp_path / "im.gguf"
    assert main(["imatrix", "compute", str(folder), "-o", str(out), "--samples", "128", "--seq-len", str(SEQ),
                 "-q"]) == 0
    counts = load_imatrix(out).entries["blk.1.ffn_down_exps.weight"].counts
    assert counts.shape == (N_EXPERT["mixtral"],) and counts.sum() == 128 * SEQ * 2


def _silence_expert(folder: Path, layer: int, expert: int) -> None:
    """DeepSeek-V3 routes by score + correction bias: a very negative bias keeps the expert unchosen."""
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    key = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
    tensors[key] = tensors[key].copy()
    tensors[key][expert] = -100.0
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_an_unseen_expert_is_reported_and_weighted_like_the_seen_ones(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from aqrecipe.imatrix.io import load_imatrix

    run = MoeRun("deepseek3", tmp_path)
    _silence_expert(run.folder, layer=1, expert=3)
    path = run.imatrix()
    printed = json.loads(capsys.readouterr().out)
    assert printed["unseen_experts"] == {f"blk.1.ffn_{r}_exps.weight": 1 for r in ("gate", "up", "down")}
    entry = load_imatrix(path).entries["blk.1.ffn_down_exps.weight"]
    assert entry.counts[3] == 0 and (np.delete(entry.counts, 3) > 0).all()
    imp = entry.importance()
    seen = np.delete(imp, 3, axis=0)
    np.testing.assert_allclose(imp[3], (seen / seen.mean(axis=1, keepdims=True)).mean(axis=0), rtol=1e-5)
    dest = tmp_path / "iq2.gguf"
    assert main(["quantize", str(run.folder), "--type", "IQ2_XXS", "--imatrix", str(path), "-o", str(dest),
                 "--no-eval", "-q"]) == 0
    import gguf

    tensor = next(t for t in gguf.GGUFReader(str(dest)).tensors if t.name == "blk.1.ffn_down_exps.weight")
    values = gguf.dequantize(tensor.data, tensor.tensor_type)
    assert np.isfinite(values).all() and np.abs(values[3]).max() > 0


@llamacpp
def test_apply_with_computed_imatrix_and_planner_runs_in_llamacpp(moe: MoeRun, tmp_path: Path) -> None:
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend
    from aqrecipe.models import open_model
    from aqrecipe.models.tensor_names import role_of
    from aqrecipe.planner.kld import probe_can_swap

    recipe = tmp_path / "plan.yaml"
    recipe.write_text(f"""version: 1
model: {moe.folder}
imatrix:
  type: compute
  calibration: {{source: {{type: builtin-wiki}}, samples: 128, seq_len: {SEQ}}}
planner:
  type: budget
  target_bpw: 3.0
  candidates: [IQ2_XXS, Q2_K, Q4_K, Q6_K]
  measurement: {{type: fisher, samples: 4, seq_len: {SEQ}, calibrate_tensors: 4}}
quantization:
  mixture: Q4_K_M
coherence: {{enabled: false}}
evaluation: {{enabled: false}}
""", encoding="utf-8")
    dest, report = tmp_path / "planned.gguf", tmp_path / "report.json"
    assert main(["apply", str(recipe), "-o", str(dest), "--report", str(report), "--work-dir", str(tmp_path / "work"), "-q"]) == 0
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(dest)).tensors}
    assert all(types[n] == "F32" for n in types if "ffn_gate_inp" in n)
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["bits_per_weight"] <= 3.0
    planned = json.loads(Path(next(f for f in summary["planner"]["report_files"] if f.endswith(".json"))).read_text())
    experts = [t for t in planned["tensors"] if role_of(t["gguf_name"]).endswith("_exps")]
    # each merged-expert tensor is one choice, ranked by the proxy (calibrated on the other tensors' Fisher
    # estimates and probes); the dense tensors have Fisher estimates
    assert len(experts) == 3 * sum(1 for n in types if n.endswith("ffn_gate_exps.weight"))
    assert all(t["measured_kld"] is None and t["predicted_kld"] > 0 for t in experts)
    measurement = json.loads(next((tmp_path / "work").rglob("measurement-*.json")).read_text())
    fisher = {t["gguf_name"]: all(o["fisher"] is not None for o in t["options"]) for t in measurement["tensors"]}
    assert not any(fisher[t["gguf_name"]] for t in experts)
    source = open_model(moe.folder)
    swappable = {n for n in fisher if probe_can_swap(source, n)}
    assert swappable and all(fisher[n] == (n in swappable) for n in fisher)
    assert all(types[t["gguf_name"]] == t["type"] for t in experts)
    backend = LlamaCppBackend(dest, n_ctx=SEQ)
    try:
        logits = backend.logits(list(range(100, 100 + SEQ)))
    finally:
        backend.close()
    assert np.isfinite(logits).all() and len(set(logits.argmax(-1).tolist())) > 1


def test_kld_only_measurement_is_refused_before_any_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A KLD probe swaps one HF weight; merged experts are slices of fused parameters, so a KLD-only
    measurement is refused up front with the remedy, not after the first probes ran."""
    run = MoeRun("mixtral", tmp_path)
    recipe = tmp_path / "kld.yaml"
    recipe.write_text(f"""version: 1
model: {run.folder}
planner:
  type: budget
  target_bpw: 5.0
  candidates: [Q4_K, Q6_K]
  measurement: {{type: kld, samples: 2, seq_len: {SEQ}}}
quantization:
  mixture: Q4_K_M
coherence: {{enabled: false}}
evaluation: {{enabled: false}}
""", encoding="utf-8")
    dest = tmp_path / "planned.gguf"
    assert main(["apply", str(recipe), "-o", str(dest), "-q"]) != 0
    err = capsys.readouterr().err
    assert "measurement type kld cannot probe" in err and "ffn_" in err and "use measurement type fisher" in err
    assert "Traceback" not in err and not dest.exists()


@llamacpp
@pytest.mark.parametrize("source", ["hf", "gguf"])
@pytest.mark.parametrize("file_type", ["Q4_K_M", "Q2_K", "IQ2_XXS"])
def test_mixture_types_equal_llama_quantize(moe: MoeRun, file_type: str, source: str, tmp_path: Path) -> None:
    """Experts, shared experts, MLA tensors and dense layers get llama-quantize's types (same imatrix),
    from the HF folder and from the F16 GGUF alike."""
    im = moe.imatrix()
    ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    recipe = tmp_path / "r.yaml"
    model = moe.folder if source == "hf" else moe.gguf("F16")
    recipe.write_text(f"version: 1\nmodel: {model}\nimatrix: {{type: file, path: {im}}}\nquantization:\n"
                      f"  mixture: {file_type}\ncoherence: {{enabled: false}}\nevaluation: {{enabled: false}}\n",
                      encoding="utf-8")
    assert main(["apply", str(recipe), "-o", str(ours), "-q"]) == 0
    proc = subprocess.run([str(_tools()["llama-quantize"]), "--imatrix", str(im), str(moe.gguf("F16")), str(theirs),
                           file_type, "2"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import gguf

    mine = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(ours)).tensors}
    ref = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(theirs)).tensors}
    assert {n: (mine[n], ref[n]) for n in ref if mine.get(n) != ref[n]} == {}


def test_moe_preset_layout(moe: MoeRun, capsys: pytest.CaptureFixture[str]) -> None:
    """The 1.58-bit MoE preset on each family: routed experts IQ1_S (down IQ1_M), everything else Q6_K
    (or its fallback for short rows), routers F32; every rule matches on every family."""
    assert main(["validate", str(PRESET), "--model", str(moe.folder)]) == 0
    capsys.readouterr()
    assert main(["compile", str(PRESET), "--model", str(moe.folder), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["unused_rules"] == []
    types = {e["gguf_name"]: e["type"] for e in plan["entries"]}
    last = max(int(n.split(".")[1]) for n in types if n.startswith("blk."))
    assert types[f"blk.{last}.ffn_gate_exps.weight"] == types[f"blk.{last}.ffn_up_exps.weight"] == "IQ1_S"
    assert types[f"blk.{last}.ffn_down_exps.weight"] == "IQ1_M"
    assert types[f"blk.{last}.ffn_gate_inp.weight"] == "F32"
    others = [n for n in types if "_exps" not in n and "ffn_gate_inp" not in n and types[n] != "F32"]
    assert others and all(types[n] in ("Q6_K", "Q8_0") for n in others)  # Q8_0: Q6_K's fallback, 64-wide rows
    if moe.name == "deepseek3":
        assert types[f"blk.{last}.ffn_down_shexp.weight"] == types["blk.0.ffn_down.weight"] == "Q6_K"
    experts = [e for e in plan["entries"] if "_exps" in e["gguf_name"]]
    bits = 8 * sum(e["n_bytes"] for e in experts) / sum(int(np.prod(e["shape"])) for e in experts)
    assert 1.5625 < bits < 1.75  # IQ1_S 1.5625, IQ1_M 1.75 bits per weight


@llamacpp
def test_moe_preset_applies_and_runs_in_llamacpp(tmp_path: Path) -> None:
    """apply on the shipped preset as a user runs it (--model, its own computed imatrix)."""
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    run = MoeRun("qwen3moe", tmp_path)
    dest = tmp_path / "moe-1.58.gguf"
    assert main(["apply", str(PRESET), "--model", str(run.folder), "-o", str(dest), "--no-eval", "-q"]) == 0
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(dest)).tensors}
    assert types["blk.1.ffn_up_exps.weight"] == "IQ1_S" and types["blk.1.ffn_down_exps.weight"] == "IQ1_M"
    backend = LlamaCppBackend(dest, n_ctx=SEQ)
    try:
        logits = backend.logits(list(range(200, 200 + SEQ)))
    finally:
        backend.close()
    assert np.isfinite(logits).all()
