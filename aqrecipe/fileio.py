"""Atomic file output: write to a temporary name in the same folder, fsync, rename.

A failed or killed run therefore never leaves a partial file at the
destination; at worst a ``.tmp-<pid>`` file that the next run ignores.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

from .errors import OutputError


@contextlib.contextmanager
def atomic_output(dest: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file next to ``dest``; on success it replaces ``dest``, on error it is removed."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        handle = open(tmp, mode)
    except FileNotFoundError:
        raise OutputError(f"output folder {dest.parent} does not exist", hint=f"create it: mkdir -p {dest.parent}") from None
    except PermissionError:
        raise OutputError(f"cannot write to {dest.parent}", hint="choose a writable output path") from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == 28:  # ENOSPC
            raise OutputError(f"disk full while writing {dest}", hint="free space or write elsewhere") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(dest: Path, text: str) -> None:
    """Write a whole text file atomically (UTF-8)."""
    with atomic_output(dest, "w") as f:
        f.write(text)


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write a whole binary file atomically."""
    with atomic_output(dest, "wb") as f:
        f.write(data)
