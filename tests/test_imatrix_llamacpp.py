"""imatrix files against llama.cpp's own tools (issue #4).

``llama-imatrix`` and ``llama-quantize`` are built from the llama.cpp sources vendored in
the llama-cpp-python sdist (tests/llamacpp_build.py; once, then cached: 1,015 CPU-seconds, see BENCHMARKS.md).
On the tiny llama model (an F32 GGUF written by aqrecipe):

a. llama-imatrix's GGUF and legacy .dat outputs load in aqrecipe, show prints them, the
   tensor names are the model's and the values equal aqrecipe's own statistics on the
   same token windows;
b. aqrecipe's imatrix (.gguf and .dat) is accepted by llama-quantize for IQ2_XXS and
   the result loads in llama-cpp-python; llama-imatrix reads our files back unchanged;
c. llama.cpp .gguf -> .dat -> .gguf through ``aqrecipe imatrix convert`` is exact, and a
   llama.cpp .dat converted to .gguf is accepted by llama-quantize.
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe.cli.commands import main
from aqrecipe.imatrix import ImatrixData, ImatrixEntry, load_imatrix, save_imatrix

CTX = 64  # llama-imatrix -c: tokens per chunk
CHUNKS = 16  # llama-imatrix --chunks
# Measured on the tiny model (F32 weights and KV cache, flash attention off, same tokens):
# worst per-tensor max|a-b|/max(b) 3e-6 (float32 rounding), lowest Spearman 0.99995. With
# llama.cpp's defaults (CPU flash attention, F16 internals) it is 2e-4, which this bound catches.
MAX_REL_ERR = 1e-4
MIN_SPEARMAN = 0.999


def _tool(path: Path, *args: object, timeout: int = 600) -> str:
    """Run a llama.cpp tool; its combined output (asserting exit 0)."""
    proc = subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{path.name} exited with {proc.returncode}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def tools() -> dict[str, Path]:
    from llamacpp_build import llamacpp_tools

    return llamacpp_tools()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("imatrix-llamacpp")


@pytest.fixture(scope="module")
def model_gguf(tiny_llama_dir: Path, work: Path) -> Path:
    dest = work / "tiny-f32.gguf"
    assert main(["quantize", str(tiny_llama_dir), "--type", "F32", "-o", str(dest), "-q", "--no-eval"]) == 0
    return dest


@pytest.fixture(scope="module")
def calib_text(work: Path) -> Path:
    """~3000 tokens (the demo tokenizer's) of the test corpus's sentences, in a fixed shuffled order."""
    from helpers_models import CORPUS

    rng = random.Random(0)
    sentences = sorted(set(CORPUS))
    path = work / "calib.txt"
    path.write_text(" ".join(rng.choice(sentences) for _ in range(200)).strip(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def llama_files(tools: dict[str, Path], model_gguf: Path, calib_text: Path, work: Path) -> dict[str, Path]:
    """llama-imatrix's outputs on the tiny model: its default GGUF and the legacy .dat."""
    files = {"gguf": work / "llama.gguf", "dat": work / "llama.dat"}
    common = ["-m", model_gguf, "-f", calib_text, "-c", CTX, "-b", CTX, "--chunks", CHUNKS, "-t", 2,
              "--no-ppl", "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--seed", 0]
    _tool(tools["llama-imatrix"], *common, "-o", files["gguf"])
    _tool(tools["llama-imatrix"], *common, "--output-format", "dat", "-o", files["dat"])
    return files


def _model_weights(tiny_llama_dir: Path) -> set[str]:
    """The weights llama-imatrix observes: every matrix inside the decoder blocks."""
    from aqrecipe.models import open_model

    return {t.gguf_name for t in open_model(tiny_llama_dir).tensors
            if t.gguf_name.startswith("blk.") and len(t.shape) == 2}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


# --- a. llama-imatrix's files in aqrecipe --------------------------------------------------
@pytest.mark.slow
@pytest.mark.llamacpp
def test_llama_imatrix_gguf_loads_with_model_names(llama_files: dict[str, Path], tiny_llama_dir: Path,
                                                    calib_text: Path) -> None:
    data = load_imatrix(llama_files["gguf"])
    assert set(data.names) == _model_weights(tiny_llama_dir)
    assert data.chunk_count == CHUNKS and data.chunk_size == CTX
    assert data.datasets == [str(calib_text)]
    for name in data.names:
        e = data.entries[name]
        assert e.n_mat == 1 and e.counts.tolist() == [CHUNKS * CTX]
        assert e.in_sum is None and np.all(e.in_sum2 > 0)


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llama_imatrix_dat_equals_its_gguf(llama_files: dict[str, Path]) -> None:
    ref = load_imatrix(llama_files["gguf"])
    for chunk_size in (CTX, None):  # the importance does not depend on the assumed chunk size
        dat = load_imatrix(llama_files["dat"], chunk_size=chunk_size)
        assert dat.names == ref.names and dat.chunk_count == CHUNKS
        for name in ref.names:
            np.testing.assert_allclose(dat.importance(name), ref.importance(name), rtol=1e-6)
    exact = load_imatrix(llama_files["dat"], chunk_size=CTX)
    assert all(exact.entries[n].counts.tolist() == [CHUNKS * CTX] for n in exact.names)


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_show_prints_llama_files(llama_files: dict[str, Path], fmt: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["imatrix", "show", str(llama_files[fmt])]) == 0
    out = capsys.readouterr().out
    names = load_imatrix(llama_files[fmt]).names
    assert out.startswith(f"imatrix: {len(names)} tensors, {CHUNKS} chunks")
    for name in names:
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+{CHUNKS * CTX if fmt == 'gguf' else CHUNKS * 512}\s",
                         out, re.M), name


@pytest.mark.slow
@pytest.mark.llamacpp
def test_values_equal_aqrecipe_on_the_same_tokens(llama_files: dict[str, Path], model_gguf: Path,
                                                  calib_text: Path, tiny_llama_dir: Path) -> None:
    import llama_cpp

    from aqrecipe.calibration.runner import RunnerOptions, run_calibration
    from aqrecipe.models import open_model

    # llama-imatrix's token windows: the file (final newline dropped) tokenized by llama.cpp
    # with its special tokens, cut into CHUNKS x CTX, BOS first in each when the model adds it.
    vocab = llama_cpp.Llama(model_path=str(model_gguf), vocab_only=True, verbose=False)
    try:
        text = calib_text.read_text(encoding="utf-8").removesuffix("\n")
        ids = np.array(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False), dtype=np.int64)
        add_bos = ids.size == len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)) + 1
        bos = vocab.token_bos()
    finally:
        vocab.close()
    windows = ids[: CHUNKS * CTX].reshape(CHUNKS, CTX).copy()
    if add_bos:
        windows[:, 0] = bos
    result = run_calibration(open_model(tiny_llama_dir), windows,
                             options=RunnerOptions(device="cpu", dtype="float32"), quiet=True)
    ours = ImatrixData.from_channel_stats(result.stats, datasets=["same tokens"], chunk_count=CHUNKS,
                                          chunk_size=CTX)
    theirs = load_imatrix(llama_files["gguf"])
    assert set(theirs.names) <= set(ours.names)
    assert set(ours.names) - set(theirs.names) == {"output.weight"}  # llama-imatrix skips it by default
    for name in theirs.names:
        a, b = ours.importance(name).astype(np.float64), theirs.importance(name).astype(np.float64)
        assert ours.entries[name].counts.tolist() == theirs.entries[name].counts.tolist()
        rel = float(np.max(np.abs(a - b)) / np.max(b))
        assert rel < MAX_REL_ERR, (name, rel)
        assert _spearman(a, b) > MIN_SPEARMAN, name


# --- b. our imatrix in llama.cpp's tools -----------------------------------------------------
@pytest.fixture(scope="module")
def our_files(tiny_llama_dir: Path, calib_text: Path, work: Path) -> dict[str, Path]:
    """``aqrecipe imatrix compute`` on the same model and text, written as .gguf and as .dat."""
    files = {"gguf": work / "ours.gguf", "dat": work / "ours.dat"}
    for path in files.values():  # the shared work folder makes the second run a resume
        assert main(["imatrix", "compute", str(tiny_llama_dir), "-o", str(path), "--source", "text",
                     "--text", str(calib_text), "--samples", "128", "--seq-len", "16", "--device", "cpu",
                     "--work-dir", str(work / "compute.work"), "-q"]) == 0
    return files


def _quantize_with(tools: dict[str, Path], imatrix: Path, model: Path, dest: Path) -> str:
    out = _tool(tools["llama-quantize"], "--imatrix", imatrix, model, dest, "IQ2_XXS", 2)
    n = len(load_imatrix(imatrix))
    assert re.search(rf"loaded {n} importance matrix entries from ", out), out[-3000:]
    fields = gguf.GGUFReader(str(dest)).fields
    assert fields["quantize.imatrix.entries_count"].contents() == n
    assert fields["quantize.imatrix.file"].contents() == str(imatrix)[:127]
    return out


def _loads_and_runs(path: Path) -> None:
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(path, n_ctx=64)
    try:
        tokens = backend.tokenize("The quick brown fox jumps over the lazy dog.")
        assert np.isfinite(backend.logits(tokens)).all()
    finally:
        backend.close()


@pytest.mark.slow
@pytest.mark.llamacpp
@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_llama_quantize_accepts_our_imatrix(tools: dict[str, Path], our_files: dict[str, Path],
                                            model_gguf: Path, work: Path, fmt: str) -> None:
    dest = work / f"tiny-IQ2_XXS-ours-{fmt}.gguf"
    _quantize_with(tools, our_files[fmt], model_gguf, dest)
    _loads_and_runs(dest)


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llama_imatrix_reads_our_files_back_unchanged(tools: dict[str, Path], our_files: dict[str, Path],
                                                      model_gguf: Path, work: Path) -> None:
    ours = load_imatrix(our_files["gguf"])
    via = work / "ours-via-llama.gguf"  # no -f: llama-imatrix only loads and saves (it still wants -m)
    _tool(tools["llama-imatrix"], "-m", model_gguf, "--in-file", our_files["gguf"], "-o", via)
    back = load_imatrix(via)
    assert back.names == ours.names and back.datasets == ours.datasets
    for name in ours.names:  # llama.cpp drops in_sum (it has no use for it); sums and counts survive
        assert back.entries[name].in_sum2.tobytes() == ours.entries[name].in_sum2.tobytes()
        assert back.entries[name].counts.tobytes() == ours.entries[name].counts.tobytes()
    via_dat = work / "ours-via-llama.dat"  # llama.cpp's .dat reader + writer: the same bytes as ours
    _tool(tools["llama-imatrix"], "-m", model_gguf, "--in-file", our_files["dat"], "--output-format", "dat",
          "-o", via_dat)
    assert via_dat.read_bytes() == our_files["dat"].read_bytes()


@pytest.mark.slow
@pytest.mark.llamacpp
def test_demo_iq2_xxs_quantizes_with_our_imatrix(tools: dict[str, Path], demo_model_dir: Path,
                                                 tmp_path: Path) -> None:
    """The tiny model's rows (64, 96) all fall back to IQ4_NL/Q4_0; the demo's ffn_down rows
    (1536) really become IQ2_XXS, which llama.cpp refuses to make without an imatrix entry."""
    from aqrecipe.evaluate.reference import reference_gguf

    ours = tmp_path / "demo.gguf"
    assert main(["imatrix", "compute", str(demo_model_dir), "-o", str(ours), "--samples", "128",
                 "--seq-len", "16", "--device", "cpu", "-q"]) == 0
    dest = tmp_path / "demo-IQ2_XXS.gguf"
    out = _quantize_with(tools, ours, reference_gguf(demo_model_dir), dest)
    assert "did not find weights for blk." not in out
    from llamacpp_tools import greedy, tensor_types

    assert sum(t == "IQ2_XXS" for t in tensor_types(dest).values()) >= 20  # ffn_down of most of the 30 layers
    assert len(greedy(dest, "The capital of France is").split()) >= 3


# --- c. conversions --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.llamacpp
def test_llama_gguf_to_dat_to_gguf_is_exact(llama_files: dict[str, Path], work: Path) -> None:
    mid, back = work / "llama-conv.dat", work / "llama-conv.gguf"
    assert main(["imatrix", "convert", str(llama_files["gguf"]), str(mid), "-q"]) == 0
    assert main(["imatrix", "convert", str(mid), str(back), "--chunk-size", str(CTX), "-q"]) == 0
    assert load_imatrix(back).equals(load_imatrix(llama_files["gguf"]))


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llama_dat_converts_to_gguf_llama_quantize_accepts(tools: dict[str, Path], llama_files: dict[str, Path],
                                                           model_gguf: Path, work: Path) -> None:
    conv = work / "llama-dat-conv.gguf"
    assert main(["imatrix", "convert", str(llama_files["dat"]), str(conv), "--chunk-size", str(CTX), "-q"]) == 0
    converted, ref = load_imatrix(conv), load_imatrix(llama_files["gguf"])
    for name in ref.names:
        np.testing.assert_allclose(converted.importance(name), ref.importance(name), rtol=1e-6)
    _quantize_with(tools, conv, model_gguf, work / "tiny-IQ2_XXS-llama-dat.gguf")


@pytest.mark.slow
@pytest.mark.llamacpp
def test_imatrix_without_dataset_name_is_accepted(tools: dict[str, Path], llama_files: dict[str, Path],
                                                  model_gguf: Path, work: Path) -> None:
    """A .dat without its trailer has no dataset name; its .gguf must still carry imatrix.datasets."""
    data = load_imatrix(llama_files["gguf"])
    data.datasets = []
    path = save_imatrix(data, work / "no-dataset.gguf")
    _quantize_with(tools, path, model_gguf, work / "tiny-IQ2_XXS-no-dataset.gguf")


# --- fast: the format facts the checks above rely on -------------------------------------------
def test_datasets_key_is_always_written(tmp_path: Path) -> None:
    data = ImatrixData({"blk.0.attn_q.weight": ImatrixEntry(np.ones((1, 4)), np.array([8.0]))}, [], 1, 8)
    path = save_imatrix(data, tmp_path / "a.gguf")
    fields = gguf.GGUFReader(str(path)).fields
    for key in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"):  # llama-quantize needs all 3
        assert key in fields, key
    assert fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    assert load_imatrix(path).equals(data)  # "no dataset name" survives the round trip


def test_empty_dat_dataset_name_reads_as_none(tmp_path: Path) -> None:
    data = ImatrixData({"blk.0.attn_q.weight": ImatrixEntry(np.ones((1, 4)), np.array([512.0]))}, [], 1, 512)
    dat = save_imatrix(data, tmp_path / "a.dat")
    assert dat.read_bytes().endswith(b"\x01\x00\x00\x00\x00\x00\x00\x00")  # chunk count 1, name length 0
    back = load_imatrix(dat)
    assert back.datasets == [] and back.equals(data)
