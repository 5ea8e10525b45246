"""Layer-level checkpoints of a calibration run in a work folder.

Layout of the folder::

    .lock                 fcntl lock: one run per folder at a time
    manifest.json         fingerprint, its components, stages completed
    stage-0007.npz        statistics of finished stage 7 (decoder layer 7)
    hidden-0.f32 / -1.f32 hidden states entering the next stage (double buffer)

Every file is written to a temporary name, fsynced and renamed, and the manifest
is renamed last, so a run killed at any instant (SIGKILL included) finds either
the old or the new state, never a mixture: stage ``k`` reads ``hidden-{k % 2}``
and writes ``hidden-{(k + 1) % 2}``, so the buffer a checkpoint points at is never
the one being overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import IO, Mapping

import numpy as np

from aqrecipe.errors import OutputError, ResumeError
from aqrecipe.formats.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
FORMAT = 1
COMPONENT_LABELS = {
    "model": "model",
    "calibration": "calibration data",
    "options": "options",
    "version": "version",
}


def fingerprint(components: Mapping[str, str]) -> str:
    """sha256 over the named component hashes (order-independent)."""
    blob = json.dumps(dict(sorted(components.items())), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def sha256_json(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class FolderLock:
    """An exclusive flock on ``<folder>/.lock``: one run per work folder at a time.

    Taking it never waits: a busy folder raises :class:`ResumeError` naming the
    holder (pid and start time, kept in the lock file for that message only).
    The kernel drops the lock when its process dies, SIGKILL included, so a
    killed run never leaves a stale lock behind.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        while True:
            fh = self._open()
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise ResumeError(
                    f"work folder {str(self.folder)!r} is in use by another run{_holder(self.path)}",
                    hint="wait for that run to finish, or pass --work-dir to use another work folder",
                ) from None
            try:  # the holder we waited on may have removed the file (a tidy finish): lock the new one
                if os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._fh: IO[str] | None = fh

    def _open(self) -> IO[str]:
        try:
            for _ in range(3):  # a finishing run may remove the (empty) folder between mkdir and open
                self.folder.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    return open(self.path, "a+")
            return open(self.path, "a+")
        except OSError as exc:
            raise OutputError(
                f"cannot create work folder {str(self.folder)!r}: {exc.strerror or exc}",
                hint="pass --work-dir with a folder you can write to",
            ) from None

    def release(self) -> None:
        """Give the folder back (idempotent)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    """`` (process PID, started TIME)`` from the lock file, or "" while it is being written."""
    try:
        pid, when = path.read_text().strip().split(" ", 1)
        return f" (process {int(pid)}, started {when})"
    except (OSError, ValueError):
        return ""


class WorkDir:
    """A locked work folder holding one run's checkpoints.

    Opening it checks the manifest's fingerprint against ``components``: a
    mismatch raises :class:`ResumeError` naming what changed, unless
    ``restart=True`` (then the old checkpoints are discarded).
    """

    def __init__(self, path: str | os.PathLike[str], components: Mapping[str, str], *,
                 n_stages: int, restart: bool = False) -> None:
        self.path = Path(path)
        self.components = dict(components)
        self.fingerprint = fingerprint(self.components)
        self.n_stages = n_stages
        self._lock = FolderLock(self.path)
        try:
            self.completed = self._open_manifest(restart)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "WorkDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- manifest ---------------------------------------------------------------
    def _open_manifest(self, restart: bool) -> int:
        manifest_path = self.path / MANIFEST
        if restart:
            self.discard()
        elif manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
                old = manifest["components"]
                completed = int(manifest["completed"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ResumeError(
                    f"work folder {str(self.path)!r} has an unreadable manifest ({exc})",
                    hint="pass restart=True (--restart) to discard it",
                ) from None
            if manifest.get("fingerprint") != self.fingerprint:
                changed = [COMPONENT_LABELS.get(k, k) for k in sorted(set(old) | set(self.components))
                           if old.get(k) != self.components.get(k)]
                raise ResumeError(
                    f"work folder {str(self.path)!r} holds checkpoints of a different run "
                    f"(changed: {', '.join(changed) or 'fingerprint'})",
                    hint="pass restart=True (--restart) to discard them, or use another work folder",
                )
            if not 0 <= completed <= self.n_stages:
                raise ResumeError(
                    f"work folder {str(self.path)!r}: manifest says {completed} of "
                    f"{self.n_stages} stages are done",
                    hint="pass restart=True (--restart) to discard it",
                )
            if completed:
                log.info("resuming from %s: %d of %d stages done", self.path, completed, self.n_stages)
            return completed
        self._write_manifest(0)
        return 0

    def _write_manifest(self, completed: int) -> None:
        payload = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "components": self.components,
            "n_stages": self.n_stages,
            "completed": completed,
        }
        text = json.dumps(payload, indent=2, sort_keys=True).encode()
        atomic_write_bytes(self.path / MANIFEST, text)

    def discard(self) -> None:
        """Remove every checkpoint file (the lock stays held)."""
        for p in self.path.iterdir():
            if p.name == LOCK:
                continue
            if p.name == MANIFEST or p.name.startswith(("stage-", "hidden-")):
                p.unlink()

    # --- stages -----------------------------------------------------------------
    def stage_path(self, stage: int) -> Path:
        return self.path / f"stage-{stage:04d}.npz"

    def save_stage(self, stage: int, arrays: Mapping[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        atomic_write_bytes(self.stage_path(stage), data)

    def load_stage(self, stage: int) -> dict[str, np.ndarray]:
        path = self.stage_path(stage)
        try:
            with np.load(path) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ResumeError(
                f"checkpoint {str(path)!r} cannot be read ({exc})",
                hint="pass restart=True (--restart) to start over",
            ) from None

    def commit(self, completed: int) -> None:
        """Record that stages ``0 .. completed-1`` are done (their files already written)."""
        self._write_manifest(completed)
        self.completed = completed
