"""Optional dependencies never traceback (issue 13): each extra missing, the real CLI in a subprocess.

A command that needs a missing extra exits with code 2 and ``error[AQ900]`` naming the
package and ``pip install 'aqrecipe[EXTRA]'``; a check the user did not ask for (the
automatic coherence check, the planner's chart, the progress bar) is skipped with a warning.

The package is made unimportable by a ``sitecustomize.py`` that sets ``sys.modules[name] =
None``: ``import name`` then raises ``ModuleNotFoundError(name=name)`` and
``importlib.util.find_spec(name)`` returns None, as for a package that is not installed (a
``sys.meta_path`` finder that raises would also break the availability probes of
transformers, which imports fine without torch).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aqrecipe import optional
from aqrecipe.errors import DependencyError

SITECUSTOMIZE = """\
import os, sys
for _name in os.environ.get("AQRECIPE_TEST_BLOCK", "").split(","):
    if _name:
        sys.modules[_name] = None  # as if not installed: import fails, find_spec is None
"""

#: the extra and the distribution name each blocked module's error must name
EXTRA = {"torch": ("torch", "torch"), "transformers": ("torch", "transformers"),
         "llama_cpp": ("eval", "llama-cpp-python"), "gensim": ("eval", "gensim"),
         "compressed_tensors": ("w8a8", "compressed-tensors"), "matplotlib": ("plot", "matplotlib")}


@pytest.fixture(scope="module")
def blocker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("block-site")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return folder


def run_cli(blocker: Path, blocked: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "AQRECIPE_TEST_BLOCK": blocked, **env}
    environ["PYTHONPATH"] = os.pathsep.join([str(blocker)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "aqrecipe.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=environ, timeout=300)


def assert_dependency_error(proc: subprocess.CompletedProcess[str], module: str) -> None:
    extra, dist = EXTRA[module]
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both, both
    assert proc.returncode == 2, both
    assert "error[AQ900]" in proc.stderr and dist in proc.stderr, proc.stderr
    assert f"pip install 'aqrecipe[{extra}]'" in proc.stderr, proc.stderr


def test_blocker_blocks(blocker: Path, tmp_path: Path) -> None:
    code = ("import importlib.util, sys\n"
            "assert importlib.util.find_spec('json') is None\n"
            "try:\n    import json\nexcept ModuleNotFoundError as e:\n    assert e.name == 'json'\n"
            "else:\n    sys.exit('json imported')\n")
    env = {**os.environ, "AQRECIPE_TEST_BLOCK": "json", "PYTHONPATH": str(blocker)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)


# --- torch / transformers: calibration and the transformers evaluation backend -----------------


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_imatrix_compute_without(module: str, blocker: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    proc = run_cli(blocker, module, ["imatrix", "compute", str(tiny_llama_dir), "-o", str(out),
                                     "--samples", "128", "--seq-len", "8"], tmp_path)
    assert_dependency_error(proc, module)
    assert "calibration" in proc.stderr
    assert not out.exists()


def test_eval_hf_folder_without_torch(blocker: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(blocker, "torch", ["eval", str(tiny_llama_dir), "--chunks", "1", "--context", "8"], tmp_path)
    assert_dependency_error(proc, "torch")
    assert "evaluating a Hugging Face folder" in proc.stderr


# --- llama_cpp: evaluating a GGUF, and the automatic coherence check ---------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aqrecipe.cli.commands import main

    out = tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf"
    assert main(["quantize", str(tiny_llama_dir), "--type", "Q8_0", "-o", str(out), "-q"]) == 0
    return out


def test_eval_gguf_without_llama_cpp(blocker: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    proc = run_cli(blocker, "llama_cpp", ["eval", str(tiny_gguf), "--chunks", "1", "--context", "8"], tmp_path)
    assert_dependency_error(proc, "llama_cpp")


def test_ultra_low_bit_quantize_skips_the_automatic_coherence_check(blocker: Path, tiny_llama_dir: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "q2_k.gguf"
    proc = run_cli(blocker, "llama_cpp", ["quantize", str(tiny_llama_dir), "--type", "Q2_K", "-o", str(out),
                                          "--json"], tmp_path)
    assert_skipped(proc, out, "llama-cpp-python")


def test_ultra_low_bit_quantize_without_gensim_skips_the_automatic_coherence_check(
        blocker: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    out = tmp_path / "q2_k.gguf"
    proc = run_cli(blocker, "gensim", ["quantize", str(tiny_llama_dir), "--type", "Q2_K", "-o", str(out), "--json"],
                   tmp_path, AQRECIPE_CACHE=str(cache))
    assert_skipped(proc, out, "gensim")


def test_asked_for_evaluation_fails_before_packing_without_llama_cpp(blocker: Path, tiny_llama_dir: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "q8.gguf"
    proc = run_cli(blocker, "llama_cpp", ["quantize", str(tiny_llama_dir), "--type", "Q8_0", "-o", str(out), "--eval"],
                   tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error[AQ900]" in proc.stderr and "llama-cpp-python" in proc.stderr, proc.stderr
    assert not out.exists()  # refused up front: nothing packed, nothing written


def assert_skipped(proc: subprocess.CompletedProcess[str], out: Path, dist: str) -> None:
    """Exit 0, the GGUF written, a warning naming the skipped check, the package and the extra."""
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in both, both
    assert out.is_file() and out.read_bytes()[:4] == b"GGUF"
    assert "WARNING" in proc.stderr and "coherence check" in proc.stderr and dist in proc.stderr, proc.stderr
    assert "pip install 'aqrecipe[eval]'" in proc.stderr, proc.stderr
    coherence = json.loads(proc.stdout).get("coherence")
    assert coherence is None or coherence.get("passed") is None  # skipped, not failed


# --- compressed_tensors: the W8A8 compressed-tensors output -------------------------------------


def test_w8a8_compressed_tensors_without(blocker: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "w8a8.yaml"
    recipe.write_text(
        f"version: 1\nmodel: {tiny_llama_dir}\n"
        "imatrix:\n  type: compute\n  calibration: {samples: 128, seq_len: 16}\n"
        "smoothquant:\n  alpha: 0.5\n  output: {type: compressed-tensors}\n"
        "quantization: {mixture: Q8_0}\n", encoding="utf-8")
    out = tmp_path / "w8a8"
    proc = run_cli(blocker, "compressed_tensors", ["apply", str(recipe), "-o", f"{out}/"], tmp_path)
    assert_dependency_error(proc, "compressed_tensors")
    assert "compressed-tensors W8A8 checkpoint" in proc.stderr
    assert not (out / "config.json").exists()


# --- matplotlib: report --plot --------------------------------------------------------------------


def _tiny_importance(path: Path) -> Path:
    from aqrecipe.importance.model import ImportanceMatrix, save_importance

    obj = ImportanceMatrix(
        tensor_scores={"blk.0.ffn_down.weight": {"imatrix": 1.0, "imatrix_norm": 1.0}},
        layer_scores={0: {"imatrix": 1.0, "imatrix_norm": 0.6}, 1: {"imatrix": 0.5, "imatrix_norm": 0.4}},
        super_weights=(), computation_method="activation", calibration_dataset_info={"source": "test"},
        arrays={"down_proj.max_out.0": np.ones(4, np.float32), "down_proj.max_out.1": np.full(4, 2.0, np.float32)})
    save_importance(obj, path)
    return path


def test_report_plot_without_matplotlib(blocker: Path, tmp_path: Path) -> None:
    imp = _tiny_importance(tmp_path / "imp.json")
    png = tmp_path / "imp.png"
    proc = run_cli(blocker, "matplotlib", ["report", str(imp), "--plot", str(png)], tmp_path)
    assert_dependency_error(proc, "matplotlib")
    assert "--plot" in proc.stderr and not png.exists()
    # without --plot the report needs no matplotlib
    proc = run_cli(blocker, "matplotlib", ["report", str(imp)], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_planner_chart_is_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from aqrecipe.planner.report import PlannerReport, TensorRow

    row = TensorRow(gguf_name="blk.0.ffn_down.weight", layer=0, type="Q4_K", bits_per_weight=4.5, n_params=256,
                    n_bytes=144, share=1.0, predicted_kld=0.01, measured_kld=None)
    report = PlannerReport(rows=(row,), total_bytes=144, n_params=256, predicted_kld=0.01)
    monkeypatch.setattr(optional, "_warned", set())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with caplog.at_level(logging.WARNING):
        files = report.save(tmp_path / "planner-report")
    assert [f.suffix for f in files] == [".md", ".json"] and all(f.is_file() for f in files)
    assert not (tmp_path / "planner-report.png").exists()
    assert "skipped the planner report's chart" in caplog.text and "pip install 'aqrecipe[plot]'" in caplog.text
    with pytest.raises(DependencyError, match="matplotlib"):
        report.save_png(tmp_path / "asked.png")


# --- gensim: the built-in Wikipedia text on a cold corpus cache ---------------------------------


def test_builtin_text_without_gensim(blocker: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    """``eval`` without --text reads the built-in evaluation split (calibration's default too)."""
    cache = tmp_path / "empty-cache"  # cold: the parsed corpus is not cached
    cache.mkdir()
    proc = run_cli(blocker, "gensim", ["eval", str(tiny_gguf), "--chunks", "1", "--context", "8"], tmp_path,
                   AQRECIPE_CACHE=str(cache))
    assert_dependency_error(proc, "gensim")
    assert "built-in Wikipedia text" in proc.stderr and "your own text file" in proc.stderr


def test_builtin_corpus_error_is_still_a_calibration_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers that fall back when there is no built-in text (``except CalibrationDataError``) still do."""
    from aqrecipe.formats import corpus
    from aqrecipe.errors import CalibrationDataError

    monkeypatch.setitem(sys.modules, "gensim", None)
    with pytest.raises(CalibrationDataError) as info:
        corpus._wiki_sample_path()
    assert isinstance(info.value, DependencyError) and info.value.code == "AQ900"


# --- tqdm: the calibration progress bar -------------------------------------------------------------


def test_progress_bar_is_skipped_without_tqdm(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from aqrecipe.calibration.runner import _progress

    monkeypatch.setattr(optional, "_warned", set())
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with caplog.at_level(logging.WARNING):
        assert _progress(3, 3, 0, quiet=False) is None
        assert _progress(3, 3, 0, quiet=False) is None
    assert caplog.text.count("skipped the calibration progress bar") == 1  # once per process
    assert "pip install 'aqrecipe[progress]'" in caplog.text


# --- the mechanism ------------------------------------------------------------------------------------


def test_require_names_the_package_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(DependencyError) as info:
        optional.require("llama_cpp", "evaluating a GGUF file")
    assert info.value.code == "AQ900"
    assert info.value.message == "evaluating a GGUF file needs llama-cpp-python, which is not installed"
    assert info.value.hint == "pip install 'aqrecipe[eval]' (or pip install llama-cpp-python)"
    assert not optional.available("llama_cpp")
    with pytest.raises(KeyError):
        optional.require("numpy", "x")  # not an extra: add it to EXTRAS first


def test_touched_modules_import_no_optional_package() -> None:
    modules = ["aqrecipe", "aqrecipe.cli", "aqrecipe.optional", "aqrecipe.formats.corpus", "aqrecipe.calibration.memory",
               "aqrecipe.calibration.runner", "aqrecipe.calibration.data", "aqrecipe.imatrix.compute",
               "aqrecipe.planner.kld", "aqrecipe.planner.report", "aqrecipe.importance.gradient",
               "aqrecipe.importance.plot", "aqrecipe.apply.smoothquant", "aqrecipe.output.w8a8",
               "aqrecipe.evaluate.torch_backend", "aqrecipe.models.demo"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            f"bad = sorted(m for m in {sorted(optional.EXTRAS)!r} if m in sys.modules)\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
