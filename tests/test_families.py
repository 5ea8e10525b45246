"""Every dense model family end to end (issue 15): Llama 3.x, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3.

A tiny random model of each family, built from its published config (tests/families.py), goes through:

a. ``open_model`` (the converter's tensor table and the family's own hyperparameters) and ``aqrecipe compile``;
b. ``quantize --type F16``: llama.cpp's next-token logits against transformers' (float32, eager attention)
   on random token windows: top-1 agreement >= 99 %, the mean KL divergence and the largest difference;
c. Q8_0, Q4_K_M and Q2_K: the KL divergence of each against the F16 file in llama.cpp is finite and
   ordered by type;
d. a recipe with a computed imatrix, super-weight detection and the planner: the GGUF loads in llama.cpp;
e. two ``quantize --type Q4_K_M`` runs write identical bytes;
g. Q4_K_M and Q3_K_M: every tensor's type equals llama-quantize's on the same F16 file;
f. the F16 GGUF as the model: ``quantize f16.gguf --type F16`` gives the F16's very logits (so b holds),
   ``--type Q4_K_M`` a KLD in its place between Q8_0 and Q2_K, close to the HF folder's Q4_K_M.

One family's files are built once: the fixture ``fam`` is module-scoped and parametrized by family, so
pytest runs every test of a family before it builds the next one. The CLI runs in-process
(``aqrecipe.cli.commands.main``: one torch import for all of it) except ``compile``, run as a subprocess.
The measured numbers are collected in ``MEASURED`` and printed after the last family (``-s`` shows them;
``AQRECIPE_FAMILIES_REPORT=FILE`` also writes them as JSON).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from families import (  # noqa: E402
    FAMILIES,
    GGUF_ARCH,
    SLIDING_WINDOW,
    SUPER_WEIGHT_LAYER,
    build_family,
    reference_checkpoint,
    super_weight_position,
)

from aqrecipe.cli.commands import main  # noqa: E402
from aqrecipe.optional import available  # noqa: E402

pytestmark = pytest.mark.slow


def uses_llamacpp(test: Any) -> Any:
    """Marked ``llamacpp`` (the real consumer) and skipped without llama-cpp-python."""
    skip = pytest.mark.skipif(not available("llama_cpp"), reason="llama-cpp-python is not installed")
    return pytest.mark.llamacpp(skip(test))


WINDOW_LEN, SEED = 64, 0  # random token windows, longer than the 16-token sliding windows
#: Windows for transformers against llama.cpp (every position scored: 512 top-1 decisions; F16 rounding
#: flips about 0.5 % of them, each a near tie) and for KL divergences between GGUF files (the second half
#: of each window scored, as aqrecipe's evaluation does).
TOP1_WINDOWS, KLD_WINDOWS = 8, 4
MIN_TOP1 = 0.99
#: Quantized files whose KLD against the F16 must be ordered (less precise, more divergence).
ORDERED_TYPES = ("Q8_0", "Q4_K_M", "Q2_K")

#: family -> what was measured (quoted by the issue's report): filled as the tests run.
MEASURED: dict[str, dict[str, Any]] = {}

FULL_RECIPE = """\
version: 1
name: {name}-imatrix-sw-planner
model: {model}
imatrix:
  type: compute
  calibration:
    source: {{type: builtin-wiki}}
    samples: 128
    seq_len: 16
  save: {imatrix}
super_weights:
  detect: {{type: combined, confirm_ratio: 0, samples: 2, seq_len: 32, gradient_samples: 1}}
  protect: {{type: raise-tensor, tensor_type: Q8_0}}
planner:
  type: budget
  target_bpw: 5.0
  candidates: [Q4_K, Q6_K, Q8_0]
  measurement: {{type: proxy, samples: 2, seq_len: 32, calibrate_tensors: 2}}
quantization:
  mixture: Q4_K_M
evaluation:
  enabled: false
"""


class FamilyRun:
    """One family's tiny model and the files made from it, each made once, on first use."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.folder = build_family(name, root / "hf")
        self._files: dict[tuple[str, str], Path] = {}
        self._windows: np.ndarray | None = None
        self._reference: dict[str, list[np.ndarray]] = {}
        self.measured = MEASURED.setdefault(name, {"reference": reference_checkpoint(name)})

    def model_ref(self, source: str) -> Path:
        """What a command is given as the model: the HF folder ("hf") or the F16 GGUF made from it ("gguf")."""
        return self.folder if source == "hf" else self.gguf("F16")

    def gguf(self, file_type: str, source: str = "hf") -> Path:
        """``quantize MODEL --type FILE_TYPE`` (once per type and source)."""
        key = (file_type, source)
        if key not in self._files:
            dest = self.root / f"{self.name}-{source}-{file_type}.gguf"
            quantize(self.model_ref(source), file_type, dest)
            self._files[key] = dest
        return self._files[key]

    def windows(self, count: int = TOP1_WINDOWS) -> np.ndarray:
        """``count`` x WINDOW_LEN token ids drawn uniformly from the vocabulary (seeded; the first windows
        are the same whatever the count)."""
        if self._windows is None:
            vocab = json.loads((self.folder / "config.json").read_text())["vocab_size"]
            self._windows = np.random.default_rng(SEED).integers(0, vocab, size=(TOP1_WINDOWS, WINDOW_LEN))
        return self._windows[:count]

    def kld(self, quantized: Path, source: str = "hf") -> tuple[float, float]:
        """(mean KLD, top-1 agreement) of ``quantized`` against the F16 GGUF of ``source`` in llama.cpp, on
        the KLD windows scored as aqrecipe's evaluation scores them (the second half of each window); the F16
        file's log-probabilities are computed once."""
        from aqrecipe.evaluate.metrics import log_softmax, scored_positions, token_kld, top1_matches

        windows = self.windows(KLD_WINDOWS)
        rows = scored_positions(windows.shape[1])
        if source not in self._reference:
            self._reference[source] = [log_softmax(logits[rows]).astype(np.float32)  # 4 bytes a value kept
                                       for logits in llama_logits(self.gguf("F16", source), windows)]
        klds, hits = [], 0
        for ref, logits in zip(self._reference[source], llama_logits(quantized, windows)):
            klds.append(token_kld(ref.astype(np.float64), log_softmax(logits[rows])))
            hits += int(top1_matches(ref, logits[rows]).sum())
        kld = np.concatenate(klds)
        return float(kld.mean()), hits / len(kld)


def quantize(model: Path, file_type: str, dest: Path) -> None:
    """The CLI's ``quantize``; Q2_K through the ``apply`` of the recipe ``quantize --emit-recipe`` prints,
    with the coherence check (on by default at Q2_K, a llama.cpp evaluation of its own) turned off."""
    if file_type != "Q2_K":
        assert main(["quantize", str(model), "--type", file_type, "-o", str(dest), "-q"]) == 0
        return
    recipe = dest.with_suffix(".yaml")
    recipe.write_text(f"version: 1\nmodel: {model}\nquantization:\n  mixture: Q2_K\ncoherence:\n  enabled: false\n"
                      "evaluation:\n  enabled: false\n", encoding="utf-8")
    assert main(["apply", str(recipe), "-o", str(dest), "-q"]) == 0


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyRun]:
    yield FamilyRun(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module", autouse=True)
def _print_measured() -> Iterator[None]:
    yield
    if MEASURED:
        print("\nmeasured per family (issue 15):\n" + json.dumps(MEASURED, indent=1, sort_keys=True))
        if os.environ.get("AQRECIPE_FAMILIES_REPORT"):
            Path(os.environ["AQRECIPE_FAMILIES_REPORT"]).write_text(json.dumps(MEASURED, indent=1, sort_keys=True))


def llama_logits(path: Path, windows: np.ndarray) -> Iterator[np.ndarray]:
    """llama.cpp's logits of each window (one window in memory at a time)."""
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(path, n_ctx=windows.shape[1])
    try:
        for window in windows:
            logits = backend.logits(window.tolist())
            assert logits.shape == (windows.shape[1], backend.vocab_size)
            yield logits
    finally:
        backend.close()


def compare_with_transformers(fam: FamilyRun, gguf: Path) -> dict[str, float]:
    """transformers (float32, eager attention) against llama.cpp on every position of the windows."""
    import torch
    from transformers import AutoModelForCausalLM

    from aqrecipe.evaluate.metrics import log_softmax, token_kld, top1_matches

    model = AutoModelForCausalLM.from_pretrained(fam.folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    windows = fam.windows()
    hits, n, max_diff, klds = 0, 0, 0.0, []
    for window, got in zip(windows, llama_logits(gguf, windows)):
        with torch.no_grad():
            ref = model(torch.from_numpy(window[None])).logits[0].float().numpy()
        assert ref.shape == got.shape, f"transformers has {ref.shape[1]} logits, llama.cpp {got.shape[1]}"
        hits += int(top1_matches(ref, got).sum())
        n += len(window)
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
        klds.append(token_kld(log_softmax(ref), log_softmax(got)))
    return {"top1": hits / n, "max_abs_logit_diff": max_diff, "kld_mean": float(np.concatenate(klds).mean())}


# ---------------------------------------------------------------------------------------------------------
# a. opening and compiling


#: What the converter must have made of each family's own features (GGUF tensors / metadata keys).
FEATURES: dict[str, dict[str, Any]] = {
    "llama3": {"tensors": ["rope_freqs.weight"], "absent": ["output.weight"]},  # llama3 rope scaling; tied
    "mistral": {"tensors": ["output.weight"]},
    "qwen2": {"tensors": ["blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"], "absent": ["output.weight"]},
    "qwen3": {"tensors": ["blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"], "absent": ["output.weight"]},
    "gemma2": {"tensors": ["blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"],
               "keys": {"gemma2.attention.sliding_window": SLIDING_WINDOW, "gemma2.attn_logit_softcapping": 50.0,
                        "gemma2.final_logit_softcapping": 30.0}},
    "gemma3": {"tensors": ["blk.0.attn_q_norm.weight", "blk.0.post_ffw_norm.weight"],
               "keys": {"gemma3.attention.sliding_window": SLIDING_WINDOW, "gemma3.rope.freq_base": 1000000.0,
                        "gemma3.rope.freq_base_swa": 10000.0}},
    "phi3": {"tensors": ["blk.0.attn_qkv.weight", "blk.0.ffn_up.weight", "output.weight"],
             "absent": ["blk.0.attn_q.weight", "blk.0.ffn_gate.weight"],
             "keys": {"phi3.rope.scaling.original_context_length": 4096}},
}


def test_open_model(fam: FamilyRun) -> None:
    from aqrecipe.models import open_model

    config = json.loads((fam.folder / "config.json").read_text())
    source = open_model(fam.folder)
    assert source.arch.gguf_arch_name == GGUF_ARCH[fam.name]
    assert source.arch.n_layers == config["num_hidden_layers"]
    assert source.arch.hidden == config["hidden_size"]
    names = {t.gguf_name for t in source.tensors}
    layers = config["num_hidden_layers"]
    assert all(f"blk.{layers - 1}.{part}.weight" in names for part in ("attn_norm", "ffn_down", "attn_output"))
    features = FEATURES[fam.name]
    assert set(features.get("tensors", [])) <= names
    assert not set(features.get("absent", [])) & names
    meta = source.gguf_metadata()
    assert meta["general.architecture"].value == GGUF_ARCH[fam.name]
    for key, want in features.get("keys", {}).items():
        assert key in meta, f"the converter wrote no {key}"
        assert meta[key].value == pytest.approx(want), key
    for info in source.tensors:
        values = source.read_for_gguf(info.gguf_name)
        assert values.shape == info.shape and values.dtype == np.float32, info.gguf_name
        assert np.isfinite(values).all(), info.gguf_name
    assert open_model(fam.folder).fingerprint() == source.fingerprint()


def test_compile(fam: FamilyRun) -> None:
    from aqrecipe.models import open_model

    recipe = fam.root / "compile.yaml"
    recipe.write_text(f"version: 1\nmodel: {fam.folder}\nquantization:\n  mixture: Q4_K_M\n"
                      "evaluation:\n  enabled: false\n", encoding="utf-8")
    plan_path = fam.root / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "aqrecipe.cli", "compile", str(recipe), "-o", str(plan_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(plan_path.read_text())
    assert plan["arch"] == GGUF_ARCH[fam.name]
    assert {e["gguf_name"] for e in plan["entries"]} == {t.gguf_name for t in open_model(fam.folder).tensors}


# ---------------------------------------------------------------------------------------------------------
# b, c. F16 against transformers; quantized against F16


@uses_llamacpp
def test_f16_matches_transformers(fam: FamilyRun) -> None:
    got = compare_with_transformers(fam, fam.gguf("F16"))
    fam.measured["f16_vs_transformers"] = got
    print(f"{fam.name} F16 in llama.cpp against transformers: top-1 {got['top1']:.4f}, max |logit difference| "
          f"{got['max_abs_logit_diff']:.4f}, mean KLD {got['kld_mean']:.2e}")
    assert got["top1"] >= MIN_TOP1
    assert got["kld_mean"] < 1e-3  # measured 1e-5 .. 6e-5
    assert got["max_abs_logit_diff"] < 1.0  # measured 0.05 .. 0.09, with logits some 30 units wide


@uses_llamacpp
def test_kld_ordered_by_type(fam: FamilyRun) -> None:
    klds = {t: fam.kld(fam.gguf(t)) for t in ORDERED_TYPES}
    fam.measured["kld_vs_f16"] = {t: {"kld_mean": k, "top1": a} for t, (k, a) in klds.items()}
    print(f"{fam.name} against the F16: " + ", ".join(f"{t} KLD {k:.4g} (top-1 {a:.3f})"
                                                     for t, (k, a) in klds.items()))
    values = [klds[t][0] for t in ORDERED_TYPES]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert values == sorted(values) and len(set(values)) == len(values), klds


# ---------------------------------------------------------------------------------------------------------
# d. imatrix + super weights + planner


@uses_llamacpp
def test_recipe_with_imatrix_super_weights_and_planner(fam: FamilyRun) -> None:
    """On the family's model with a planted super weight: the recipe finds it, protects its tensor, and the
    planner's GGUF loads in llama.cpp."""
    import gguf

    folder = build_family(fam.name, fam.root / "hf-super-weight", super_weight=True)
    recipe, imatrix = fam.root / "full.yaml", fam.root / "imatrix.gguf"
    recipe.write_text(FULL_RECIPE.format(name=fam.name, model=folder, imatrix=imatrix), encoding="utf-8")
    dest, report = fam.root / f"{fam.name}-full.gguf", fam.root / "full-report.json"
    assert main(["apply", str(recipe), "-o", str(dest), "--report", str(report), "-q"]) == 0
    assert imatrix.is_file()
    data = json.loads(report.read_text())
    tensor = f"blk.{SUPER_WEIGHT_LAYER}.ffn_down.weight"
    found = [(sw["tensor"], sw["row"], sw["col"]) for sw in data["super_weights"]["found"]]
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(dest)).tensors}
    bpw = data["bits_per_weight"]
    fam.measured["imatrix_super_weights_planner"] = {"super_weights": found, "bits_per_weight": bpw,
                                                     "seconds": data["seconds"]}
    print(f"{fam.name} imatrix + super weights + planner: found {found}, {bpw:.3f} bpw, {tensor} {types[tensor]}")
    assert (tensor, *super_weight_position(fam.name)) in found
    assert types[tensor] == "Q8_0"  # raise-tensor protection
    assert 4.5 < bpw < 5.5  # the planner's target: 5.0
    windows = fam.windows(KLD_WINDOWS)
    for logits in llama_logits(dest, windows):
        assert np.isfinite(logits).all()
        assert len(set(logits.argmax(-1).tolist())) > 1  # not one token everywhere


@pytest.mark.llamacpp
@pytest.mark.parametrize("file_type", ["Q4_K_M", "Q3_K_M"])
def test_mixture_types_equal_llama_quantize(fam: FamilyRun, file_type: str) -> None:
    """Every tensor's type as llama.cpp's own llama-quantize chooses it on the same F16 file."""
    import gguf
    from llamacpp_build import llamacpp_tools

    theirs = fam.root / f"{fam.name}-llama-quantize-{file_type}.gguf"
    proc = subprocess.run([str(llamacpp_tools()["llama-quantize"]), str(fam.gguf("F16")), str(theirs), file_type,
                           "2"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    types = {path: {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
             for path in (fam.gguf(file_type), theirs)}
    assert types[fam.gguf(file_type)] == types[theirs]


# ---------------------------------------------------------------------------------------------------------
# e. determinism


def test_quantize_is_deterministic(fam: FamilyRun) -> None:
    again = fam.root / f"{fam.name}-Q4_K_M-again.gguf"
    quantize(fam.folder, "Q4_K_M", again)
    assert fam.gguf("Q4_K_M").read_bytes() == again.read_bytes()


# ---------------------------------------------------------------------------------------------------------
# f. the F16 GGUF as the model


@uses_llamacpp
def test_gguf_input_f16_is_the_same_model(fam: FamilyRun) -> None:
    """``quantize f16.gguf --type F16`` gives llama.cpp the very logits of f16.gguf, so b holds for it too."""
    windows = fam.windows(KLD_WINDOWS)
    for ref, got in zip(llama_logits(fam.gguf("F16"), windows), llama_logits(fam.gguf("F16", "gguf"), windows)):
        np.testing.assert_array_equal(got, ref)
    fam.measured["gguf_input_f16"] = "the same logits as the F16 from the HF folder"


@uses_llamacpp
def test_gguf_input_q4_k_m(fam: FamilyRun) -> None:
    """``quantize f16.gguf --type Q4_K_M``: KLD against the F16 finite, in its place between Q8_0 and Q2_K,
    and within 5 % of the Q4_K_M made from the HF folder (the same weights, rounded to F16 first)."""
    kld, top1 = fam.kld(fam.gguf("Q4_K_M", "gguf"))
    from_folder = {t: fam.kld(fam.gguf(t))[0] for t in ORDERED_TYPES}
    fam.measured["gguf_input_q4_k_m"] = {"kld_mean": kld, "top1": top1}
    print(f"{fam.name} quantize f16.gguf --type Q4_K_M: KLD {kld:.4g} (top-1 {top1:.3f}); "
          f"from the HF folder {from_folder['Q4_K_M']:.4g}")
    assert math.isfinite(kld)
    assert from_folder["Q8_0"] < kld < from_folder["Q2_K"]
    assert kld == pytest.approx(from_folder["Q4_K_M"], rel=0.05)
