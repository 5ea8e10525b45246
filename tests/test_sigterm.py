"""SIGTERM is handled like Ctrl-C (issue 16, class 9): a real ``aqrecipe`` process is sent SIGTERM mid-run.

Each run is paused at a known point (``aqrecipe._testhooks``: while the GGUF is being packed, or
with the finished file staged; for ``imatrix compute`` inside a checkpoint write, its temp file
open), then signalled from outside. The run must unwind through the same cleanup as a
KeyboardInterrupt: exit code 143 (128 + SIGTERM; Ctrl-C gives 130), no staging or temp file, no
lock file, no output, and the checkpoints a rerun resumes from kept. Before the handler, SIGTERM
left ``.aqrecipe-work/<name>/.lock`` and ``output/<name>.tmp-<pid>`` behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aqrecipe._testhooks import PAUSE_ENV, PAUSE_FILE_ENV
from aqrecipe.cli.commands import main
from aqrecipe.cli.termination import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

ROOT = Path(__file__).resolve().parents[1]

# imatrix compute has no pause point of its own: the child pauses its stage-1 checkpoint write with
# the temp file open (the calibration runner's own hooks only SIGKILL)
IMATRIX_CHILD = """
import os, sys, time
from pathlib import Path
import aqrecipe.calibration.checkpoint as checkpoint
from aqrecipe.formats.fileio import atomic_output

marker = sys.argv[1]

def pausing_write(dest, data):
    with atomic_output(dest) as fh:
        fh.write(data)
        fh.flush()
        if Path(dest).name == "stage-0001.npz":
            Path(marker).write_text(str(os.getpid()))
            while Path(marker).exists():
                time.sleep(0.05)

checkpoint.atomic_write_bytes = pausing_write
from aqrecipe.cli.commands import main
sys.exit(main(sys.argv[2:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def _start(argv: list[str], marker: Path, *, pause_at: str | None = None) -> subprocess.Popen:
    if pause_at is None:
        cmd = [sys.executable, "-c", IMATRIX_CHILD, str(marker), *argv]
        env = _env()
    else:
        cmd = [sys.executable, "-m", "aqrecipe.cli", *argv]
        env = _env(**{PAUSE_ENV: pause_at, PAUSE_FILE_ENV: str(marker)})
    # a shell starts background jobs (`make test &`) with SIGINT ignored, and Python keeps an inherited
    # ignore, so the child would never see Ctrl-C: give it the default disposition a terminal gives
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_when_paused(proc: subprocess.Popen, marker: Path, signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Wait for the pause marker, send ``signum`` from outside, return the exit code and stderr."""
    from helpers_processes import wait_for_pause

    wait_for_pause(proc, marker)
    proc.send_signal(signum)  # the marker stays: the handler, not the end of the pause, must end the run
    try:
        _, stderr = proc.communicate(timeout=300)  # generous: on a fully loaded 2-core machine 120 s once ran out
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run did not stop on the signal")
    finally:
        marker.unlink(missing_ok=True)
    return proc.returncode, stderr


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name or p.name == ".lock")


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, EXIT_TERMINATED, "terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_signal_while_packing_leaves_no_staging_file_and_no_lock(q8_recipe: Path, tmp_path: Path, signum: int,
                                                                 code: int, said: str) -> None:
    """SIGTERM and Ctrl-C take one path: same cleanup, their own exit codes."""
    out, marker = tmp_path / "o.gguf", tmp_path / "paused"
    proc = _start(["apply", str(q8_recipe), "-o", str(out), "-q"], marker, pause_at="pack:3")
    rc, stderr = _signal_when_paused(proc, marker, signum)
    assert rc == code, stderr[-2000:]
    assert said in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.yaml"]  # no .aqrecipe-work, no temp file


def test_sigterm_with_the_output_staged_removes_it(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The complete GGUF waits in the work folder to be moved: SIGTERM then leaves neither it nor the lock."""
    out, marker = tmp_path / "out" / "o.gguf", tmp_path / "paused"
    out.parent.mkdir()
    argv = ["quantize", str(tiny_llama_dir), "--type", "Q8_0", "-o", str(out), "-q", "--no-eval"]
    rc, stderr = _signal_when_paused(_start(argv, marker, pause_at="publish:0"), marker)
    assert rc == EXIT_TERMINATED, stderr[-2000:]
    assert list(out.parent.iterdir()) == []  # no output, no .aqrecipe-work/o.gguf/{.lock,output/o.gguf}


@pytest.mark.slow
def test_sigterm_during_imatrix_compute_keeps_checkpoints_and_resumes(tiny_llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from helpers_models import CORPUS

    from aqrecipe.calibration.checkpoint import FolderLock

    text = tmp_path / "calib.txt"
    text.write_text("\n".join(CORPUS * 3), encoding="utf-8")
    out, work, marker = tmp_path / "im.gguf", tmp_path / "im.gguf.work", tmp_path / "paused"
    argv = ["imatrix", "compute", str(tiny_llama_dir), "-o", str(out), "--source", "text", "--text", str(text),
            "--samples", "128", "--seq-len", "16", "--device", "cpu", "-q"]
    rc, stderr = _signal_when_paused(_start(argv, marker), marker)
    assert rc == EXIT_TERMINATED and "terminated (SIGTERM)" in stderr, stderr[-2000:]
    assert not out.exists()
    assert [p for p in _leftovers(work) if p != ".lock"] == []  # stage-0001.npz.tmp-<pid> removed
    assert (work / "stage-0000.npz").is_file() and not (work / "stage-0001.npz").exists()
    with FolderLock(work):  # released: the next run may take it
        pass
    kept = (work / "stage-0000.npz").stat().st_ino
    assert main(argv) == 0  # the rerun resumes from stage 1
    assert out.is_file() and (work / "stage-0000.npz").stat().st_ino == kept


def test_the_handler_raises_terminated_once_and_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts the sleep
    assert signal.getsignal(signal.SIGTERM) is before
    with sigterm_as_interrupt():  # while unwinding, a second SIGTERM does not cut the cleanup short
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Terminated:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # ignored: the cleanup goes on
    assert signal.getsignal(signal.SIGTERM) is before
    assert issubclass(Terminated, KeyboardInterrupt)  # every `except BaseException` cleanup runs for it
