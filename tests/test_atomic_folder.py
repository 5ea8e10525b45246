"""fileio.atomic_folder: a folder output appears whole or not at all, and write failures are named."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from aqrecipe.errors import OutputError
from aqrecipe.formats.fileio import atomic_folder


def test_replaces_an_earlier_folder_only_when_complete(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(dest) as tmp:
            (tmp / "config.json").write_text("new")
            raise RuntimeError("killed half way")
    assert (dest / "config.json").read_text() == "old"
    with atomic_folder(dest) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"x")
        (tmp / "config.json").write_text("new")
    assert (dest / "config.json").read_text() == "new" and (dest / "sub" / "a.bin").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left


def test_a_full_disk_inside_the_folder_is_an_output_error(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    with pytest.raises(OutputError, match="disk full while writing"):
        with atomic_folder(dest) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert list(tmp_path.iterdir()) == []


def test_an_error_about_another_file_is_not_reworded(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with atomic_folder(tmp_path / "model"):
            raise FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "input.safetensors"))
    assert list(tmp_path.iterdir()) == []
