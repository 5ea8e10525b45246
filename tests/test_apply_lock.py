"""One apply per work folder (lock), --max-memory (parsing, refusal, spilling) and the run
summary's peak RSS and stage times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aqrecipe.calibration import memory
from aqrecipe._testhooks import PAUSE_ENV, PAUSE_FILE_ENV
from aqrecipe.cli.commands import main
from aqrecipe.errors import MemoryLimitError

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    from helpers_processes import wait_for_pause

    wait_for_pause(proc, marker, "apply #1")


def test_second_apply_on_a_busy_work_folder_fails_at_once(q8_recipe: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out, marker = tmp_path / "o.gguf", tmp_path / "paused"
    argv = ["apply", str(q8_recipe), "-o", str(out), "-q"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{PAUSE_ENV: "pack:3", PAUSE_FILE_ENV: str(marker)})
    first = subprocess.Popen([sys.executable, "-m", "aqrecipe.cli", *argv], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(marker, first)  # apply #1 holds the lock, three tensors into its GGUF
        assert main(argv) == 2  # same output, so the same default work folder
        err = capsys.readouterr().err
        assert "error[AQ600]" in err and "is in use by another run" in err
        assert f"(process {first.pid}, started " in err and "--work-dir" in err
        assert main([*argv, "--json"]) == 2
        payload = json.loads(capsys.readouterr().out)["error"]
        assert payload["type"] == "ResumeError" and str(first.pid) in payload["message"]
        assert not out.exists()  # neither run has published anything
    finally:
        marker.unlink(missing_ok=True)  # let apply #1 go on
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert out.stat().st_size > 0
    assert main(argv) == 0  # the lock went with apply #1


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    from aqrecipe.calibration.checkpoint import FolderLock
    from aqrecipe.errors import ResumeError

    code = ("import os, signal, sys; from aqrecipe.calibration.checkpoint import FolderLock\n"
            f"lock = FolderLock({str(tmp_path)!r}); print('held', flush=True); sys.stdin.readline()\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    holder = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ResumeError, match=rf"in use by another run \(process {holder.pid}, started "):
        FolderLock(tmp_path)
    holder.communicate("go\n", timeout=60)
    assert holder.returncode == -9
    with FolderLock(tmp_path):  # the kernel released it with the process
        pass


@pytest.mark.parametrize("text, value", [("4GiB", 4 << 30), ("512MiB", 512 << 20), ("8GB", 8 * 10**9),
                                         ("4g", 4 << 30), ("1.5 GiB", 3 << 29), ("100", 100), ("64kb", 64000)])
def test_parse_memory(text: str, value: int) -> None:
    assert memory.parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "4XB", "-1G", "0", "GiB", "1e9"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(MemoryLimitError, match="cannot read memory size") as err:
        memory.parse_memory(text)
    assert "4GiB" in err.value.hint


def test_too_small_max_memory_is_refused_before_any_work(q8_recipe: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.gguf"
    assert main(["apply", str(q8_recipe), "-o", str(out), "--max-memory", "1MiB"]) == 2
    err = capsys.readouterr().err
    assert "error[AQ750]: --max-memory 1.00 MiB is too small" in err and "hint: raise --max-memory" in err
    assert not out.exists() and not (tmp_path / ".aqrecipe-work").exists()
    assert main(["apply", str(q8_recipe), "-o", str(out), "--max-memory", "lots"]) == 2
    assert "cannot read memory size 'lots'" in capsys.readouterr().err


def _imatrix(model: Path, text: Path, out: Path, *extra: str) -> list[str]:
    return ["imatrix", "compute", str(model), "-o", str(out), "--source", "text", "--text", str(text),
            "--samples", "128", "--seq-len", "16", "--device", "cpu", "--batch-tokens", "64", "-q", *extra]


def test_small_max_memory_spills_the_cache_with_identical_bytes(tiny_llama_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from helpers_models import CORPUS

    from aqrecipe.calibration import runner

    spilled: list[bool] = []

    class SpyCache(runner.ActivationCache):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            spilled.append(self.spilled)

    monkeypatch.setattr(runner, "ActivationCache", SpyCache)
    # the process's own size is the test runner's: take it out, so the budget is the model's alone
    monkeypatch.setattr(memory, "calibration_baseline", lambda: 0)
    text = tmp_path / "calib.txt"
    text.write_text("\n".join(CORPUS * 3), encoding="utf-8")
    # token_embd (49152 x 64) read + packed: 24 MiB; 4 samples x 64 KiB of activations; cache 512 KiB > what is left
    assert main(_imatrix(tiny_llama_dir, text, tmp_path / "small.gguf", "--max-memory", "24.6MiB")) == 0
    assert main(_imatrix(tiny_llama_dir, text, tmp_path / "mem.gguf")) == 0
    assert spilled == [True, False]
    assert (tmp_path / "small.gguf").read_bytes() == (tmp_path / "mem.gguf").read_bytes()
    with pytest.raises(MemoryLimitError, match=r"largest step \(tensor token_embd.weight, float32\)"):
        memory.calibration_options(runner.RunnerOptions(), _source(tiny_llama_dir), samples=128, seq_len=16,
                                   max_memory=100 << 10, baseline=0)


def _source(folder: Path):
    from aqrecipe.models import open_model

    return open_model(folder)


def test_max_memory_shrinks_only_a_batch_that_cannot_fit(tiny_llama_dir: Path) -> None:
    from aqrecipe.calibration.runner import RunnerOptions

    src = _source(tiny_llama_dir)
    roomy = memory.calibration_options(RunnerOptions(batch_tokens=64), src, samples=128, seq_len=16,
                                       max_memory=64 << 20, baseline=0)
    assert roomy.batch_tokens == 64 and roomy.max_cache_bytes > 128 * 16 * 64 * 4
    step = 24 << 20  # token_embd (49152 x 64 float32) read and packed
    tight = memory.calibration_options(RunnerOptions(batch_tokens=4096), src, samples=128, seq_len=16,
                                       max_memory=step + (1 << 20), baseline=0)
    assert 16 <= tight.batch_tokens < 4096 and tight.batch_tokens % 16 == 0
    with pytest.raises(MemoryLimitError, match="one calibration sample of 16 tokens"):
        memory.calibration_options(RunnerOptions(), src, samples=128, seq_len=16, max_memory=step + (32 << 10),
                                   baseline=0)


def test_report_and_summary_carry_peak_rss_and_stage_times(q8_recipe: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "o.gguf", tmp_path / "report.json"
    assert main(["apply", str(q8_recipe), "-o", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "peak RSS " in text and "pack_and_write " in text
    data = json.loads(report.read_text())
    assert isinstance(data["peak_rss_bytes"], int) and data["peak_rss_bytes"] > 0
    assert data["peak_rss_children_bytes"] >= 0
    assert set(data["seconds"]) >= {"imatrix", "stages", "pack_and_write", "total"}
    assert all(v >= 0 for v in data["seconds"].values()) and data["seconds"]["total"] > 0


def test_a_plain_apply_leaves_no_work_folder(q8_recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    assert main(["apply", str(q8_recipe), "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf", "q8.yaml"]  # nothing to resume from
