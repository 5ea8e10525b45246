"""Atomic file output: write to a temporary name in the same folder, fsync, rename.

A failed or killed run therefore never leaves a partial file at the
destination; at worst a ``<name>.tmp-<pid>`` file that the next run ignores.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import OutputError


def check_output_folder(dest: Path) -> None:
    """OutputError unless ``dest``'s folder exists and is writable (checked before any work)."""
    dest = Path(dest)
    folder = dest.parent
    if not folder.is_dir():
        raise OutputError(
            f"output folder {folder} does not exist",
            hint=f"create it first (mkdir -p {folder}) or choose another output path",
        )
    if dest.is_dir():
        raise OutputError(f"output path {dest} is a folder", hint="give a file name, e.g. model.gguf")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"output folder {folder} is not writable",
            hint="choose a folder you can write to, or fix its permissions",
        )


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; on success it is fsynced and renamed to ``dest``."""
    dest = Path(dest)
    check_output_folder(dest)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_folder(dest.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"disk full while writing {dest}", hint="free some space or write elsewhere") from exc
        raise OutputError(f"cannot write {dest}: {exc}", hint="check free disk space and permissions") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output(dest: Path, mode: str = "wb") -> Iterator[IO]:
    """Like :func:`atomic_path` but yields an open file."""
    with atomic_path(dest) as tmp, open(tmp, mode) as handle:
        yield handle


def atomic_write_text(dest: Path, text: str) -> None:
    """Write a whole text file atomically (UTF-8)."""
    with atomic_output(dest, "w") as f:
        f.write(text)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write a whole binary file atomically."""
    with atomic_output(dest, "wb") as f:
        f.write(data)


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
