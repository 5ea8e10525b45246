"""The one bounded reader (aqrecipe.formats.bounded, issue 16 class 2), on its own.

Every file aqrecipe reads whole goes through read_bounded: special files are refused unread (a FIFO
never blocks), sizes are checked before reading, and a file whose size lies cannot get past the
limit. The last test keeps it the only way: no module reads a file whole behind its back.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest

from aqrecipe.errors import AqrecipeError, PlanError
from aqrecipe.formats.bounded import LIMITS, limit_for, read_bounded, read_text_bounded, regular_file_size

ROOT = Path(__file__).resolve().parents[1]


def test_reads_up_to_the_limit_and_refuses_one_byte_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQRECIPE_READ_LIMIT_PLAN", "100")
    (tmp_path / "ok.json").write_bytes(b"x" * 100)
    (tmp_path / "big.json").write_bytes(b"x" * 101)
    assert read_bounded(tmp_path / "ok.json", kind="plan", what="plan file") == b"x" * 100
    with pytest.raises(PlanError, match=r"plan file '.*big.json' is 101 bytes .*plan files may have at most 100 bytes"):
        read_bounded(tmp_path / "big.json", kind="plan", what="plan file", error=PlanError)
    with pytest.raises(PlanError, match="AQRECIPE_READ_LIMIT_PLAN"):
        regular_file_size(tmp_path / "big.json", kind="plan", what="plan file", error=PlanError)
    assert read_text_bounded(tmp_path / "ok.json", kind="plan", what="plan file") == "x" * 100


def test_a_small_file_under_a_large_limit_allocates_only_its_size(tmp_path: Path) -> None:
    import tracemalloc

    (tmp_path / "im.dat").write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert len(read_bounded(tmp_path / "im.dat", kind="imatrix", what="imatrix")) == 1000  # 4 GiB limit
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated to read 1000"


def test_a_file_whose_size_lies_is_cut_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQRECIPE_READ_LIMIT_TEXT", "1KiB")
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(AqrecipeError, match="holds more than 1024 bytes although its size says 0"):
        read_bounded("/proc/self/maps", kind="text", what="text file")


@pytest.mark.parametrize("make, kind", [
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: p.mkdir(), "a folder"),
    (lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "a socket"),
])
def test_special_files_are_refused_unread(tmp_path: Path, make, kind: str) -> None:
    path = tmp_path / "special"
    make(path)
    started = time.monotonic()
    with pytest.raises(AqrecipeError, match=f"is {kind}"):
        read_bounded(path, kind="recipe", what="recipe file")  # a FIFO without a writer would block an open
    assert time.monotonic() - started < 5


def test_devices_are_refused() -> None:
    for device in ("/dev/zero", "/dev/urandom"):
        with pytest.raises(AqrecipeError, match="is a character device"):
            read_bounded(device, kind="recipe", what="recipe file")


def test_a_missing_file_is_the_callers_to_word(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "none", kind="recipe", what="recipe file")


def test_limits_and_their_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LIMITS["recipe"] == 1 << 20 and LIMITS["plan"] == 256 << 20 and LIMITS["imatrix"] == 4 << 30
    monkeypatch.setenv("AQRECIPE_READ_LIMIT_TEXT", "2GiB")
    assert limit_for("text") == 2 << 30
    monkeypatch.setenv("AQRECIPE_READ_LIMIT_TEXT", "lots")
    with pytest.raises(AqrecipeError, match="AQRECIPE_READ_LIMIT_TEXT='lots' is not a size"):
        limit_for("text")


# Reads of whole files that are not the bounded reader's, each with the reason it may stay.
# Files of the modules other work is reshaping are listed by path until their owners move them over.
ALLOWED_WHOLE_READS = {
    "aqrecipe/recipe/schema.py": "the packaged JSON schema (a resource of the wheel)",
    "aqrecipe/models/converter/bundle.py": "hashes the files of the pinned converter sdist it unpacked",
    "aqrecipe/models/converter/table.py": "aqrecipe's own cache of converted tables",
    "aqrecipe/models/demo.py": "the demo model aqrecipe materialised itself",
    "aqrecipe/planner/measure.py": "measurement checkpoints in the locked work folder (planner/ is being redesigned)",
    "aqrecipe/planner/measurement.py": "a measurement file (planner/ is being redesigned)",
    "aqrecipe/importance/model.py": "an importance JSON for report/inspect (importance/ is being redesigned)",
    "aqrecipe/calibration/checkpoint.py": "lock and manifest of a locked work folder (calibration/ is being redesigned)",
}
_WHOLE_READ = re.compile(r"\.read_(text|bytes)\(|json\.load\(")


def test_no_module_reads_a_file_whole_behind_the_readers_back() -> None:
    offenders = []
    for path in sorted((ROOT / "aqrecipe").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "aqrecipe/formats/bounded.py" or rel in ALLOWED_WHOLE_READS:
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _WHOLE_READ.search(line.split("#", 1)[0]):
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
    assert not offenders, "read these through aqrecipe.formats.bounded.read_bounded:\n" + "\n".join(offenders)
