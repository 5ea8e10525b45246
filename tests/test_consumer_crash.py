"""A crash inside llama.cpp never takes aqrecipe down (issue 13).

llama.cpp runs in a worker process. The test hook ``AQRECIPE_TEST_KILL_AT`` makes
that worker die by a real signal at a named point (``llamacpp-load``,
``llamacpp-logits``, ``llamacpp-generate``), the way a segfault in llama.cpp would;
the parent must turn it into ``error[AQ810]`` with the signal, the file and what
to try, keep the files the run wrote, and exit 1 (not 139).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe._testhooks import KILL_ENV
from aqrecipe.errors import ConsumerCrashError

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.llamacpp

TEXT = " ".join(["The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun."] * 40)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aqrecipe.cli.commands import main

    dest = tmp_path_factory.mktemp("crash") / "tiny-q8.gguf"
    assert main(["quantize", str(tiny_llama_dir), "--type", "Q8_0", "-o", str(dest), "--no-eval", "-q"]) == 0
    return dest


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _backend(path: Path, **env: str):
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return LlamaCppBackend(path, n_ctx=64)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.mark.parametrize("signal_name, number", [("SIGSEGV", 11), ("SIGABRT", 6), ("SIGKILL", 9)])
def test_worker_death_is_a_named_error(tiny_gguf: Path, signal_name: str, number: int, monkeypatch) -> None:
    monkeypatch.setenv(KILL_ENV, f"llamacpp-logits:0:{signal_name}")
    backend = _backend(tiny_gguf)
    tokens = backend.tokenize("The quick brown fox")
    with pytest.raises(ConsumerCrashError) as info:
        backend.logits(tokens)
    message = str(info.value)
    assert f"llama.cpp crashed (signal {number}, {signal_name}) while evaluating {tiny_gguf}" in message
    assert "AQRECIPE_LLAMACPP_REPACK=off" in message or "--no-repack" in message
    with pytest.raises(Exception, match="closed"):  # a dead backend says so instead of hanging
        backend.logits(tokens)
    backend.close()


def test_crash_while_loading_names_loading(tiny_gguf: Path, monkeypatch) -> None:
    monkeypatch.setenv(KILL_ENV, "llamacpp-load:0:SIGSEGV")
    with pytest.raises(ConsumerCrashError, match=r"signal 11, SIGSEGV\) while loading"):
        _backend(tiny_gguf)


def test_repack_switch_reaches_llama_cpp_and_gives_the_same_logits(tiny_gguf: Path) -> None:
    on = _backend(tiny_gguf, AQRECIPE_LLAMACPP_REPACK="on")
    off = _backend(tiny_gguf, AQRECIPE_LLAMACPP_REPACK="off")
    try:
        assert on.repack is True and off.repack is False  # read back from the params llama.cpp got
        tokens = on.tokenize(TEXT)[:64]
        a, b = on.logits(tokens), off.logits(tokens)
        assert a.shape == (64, on.vocab_size) and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * float(np.abs(a).max()))
    finally:
        on.close()
        off.close()


def test_auto_repack_is_off_exactly_when_llama_cpp_uses_amx(monkeypatch) -> None:
    from aqrecipe.evaluate import llamacpp_worker as worker

    line = {"text": ""}
    monkeypatch.setattr(worker, "system_info", lambda _lib: line["text"])
    monkeypatch.delenv(worker.REPACK_ENV, raising=False)
    line["text"] = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    assert worker.repack_enabled(None) is False
    line["text"] = "CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | REPACK = 1 |"
    assert worker.repack_enabled(None) is True
    monkeypatch.setenv(worker.REPACK_ENV, "on")
    line["text"] = "AMX_INT8 = 1"
    assert worker.repack_enabled(None) is True
    monkeypatch.setenv(worker.REPACK_ENV, "off")
    assert worker.repack_enabled(None) is False


def _recipe(tmp_path: Path, model: Path, text: Path, *, coherence: bool = False) -> Path:
    path = tmp_path / "recipe.yaml"
    lines = [
        "version: 1", "name: crash-test", f"model: {model}",
        "quantization:", "  default: Q8_0",
        "evaluation:", "  enabled: true", f"  text: {text}", "  chunks: 2", "  context: 64",
    ]
    if coherence:
        lines += ["coherence:", "  enabled: true", "  chunks: 2", "  context: 64", "  new_tokens: 8"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aqrecipe.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


@pytest.mark.parametrize("point, doing", [("llamacpp-logits:0:SIGSEGV", "evaluating"),
                                          ("llamacpp-generate:0:SIGABRT", "generating with")])
def test_apply_keeps_its_output_and_report_when_llama_cpp_crashes(tiny_llama_dir: Path, text_file: Path,
                                                                    tmp_path: Path, point: str, doing: str) -> None:
    recipe = _recipe(tmp_path, tiny_llama_dir, text_file, coherence=point.startswith("llamacpp-generate"))
    out, report = tmp_path / "out.gguf", tmp_path / "report.json"
    proc = _run(["apply", str(recipe), "-o", str(out), "--report", str(report)], **{KILL_ENV: point})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    signal_name = point.rsplit(":", 1)[1]
    assert f"error[AQ810]: " in proc.stderr and f"llama.cpp crashed (signal" in proc.stderr, proc.stderr
    assert f"{signal_name}) while {doing} {out}" in proc.stderr, proc.stderr
    assert "FAILED" in proc.stdout  # the summary says which check failed
    assert gguf.GGUFReader(str(out)).tensors  # the GGUF is complete and stays
    data = json.loads(report.read_text())
    failure = data["evaluation_failed"][0]
    assert failure["code"] == "AQ810" and signal_name in failure["message"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_eval_command_crash_exits_1_with_the_message(tiny_gguf: Path, text_file: Path) -> None:
    proc = _run(["eval", str(tiny_gguf), "--text", str(text_file), "--chunks", "2", "--context", "64"],
                **{KILL_ENV: "llamacpp-logits:1:SIGSEGV"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error[AQ810]: llama.cpp crashed (signal 11, SIGSEGV) while evaluating {tiny_gguf}" in proc.stderr
    assert "Traceback" not in proc.stderr
