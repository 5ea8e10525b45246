"""Atomic file output: write to a temporary name in the same folder, fsync, rename.

A failed or killed run therefore never leaves a partial file at the
destination; at worst a ``<name>.tmp-<pid>`` file that the next run ignores.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from aqrecipe.errors import OutputError


def check_output_folder(dest: Path, *, probe: bool = False, folder_ok: bool = False) -> None:
    """OutputError unless ``dest``'s folder exists and is writable (checked before any work).

    ``dest`` must not be a folder unless ``folder_ok`` (outputs that are folders).
    ``probe`` also creates and removes ``dest``'s temp name there: ``os.access``
    says yes to root whatever the folder allows (a network or FUSE mount, a
    security module), and a real create is the only answer that holds.
    """
    dest = Path(dest)
    folder = dest.parent
    if not folder.is_dir():
        raise OutputError(
            f"output folder {folder} does not exist",
            hint=f"create it first (mkdir -p {folder}) or choose another output path",
        )
    if dest.is_dir() and not folder_ok:
        raise OutputError(f"output path {dest} is a folder", hint="give a file name, e.g. model.gguf")
    writable = os.access(folder, os.W_OK | os.X_OK)
    reason = _probe_create(dest.with_name(f"{dest.name}.tmp-{os.getpid()}")) if writable and probe else None
    if not writable or reason is not None:
        raise OutputError(
            f"output folder {folder} is not writable" + (f" ({reason})" if reason else ""),
            hint="choose a folder you can write to, or fix its permissions",
        )


def _probe_create(tmp: Path) -> str | None:
    """None when ``tmp`` can be created (it is removed again), else why not."""
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return None  # a dead process's temp (it had our pid): os.access's yes stands
    except OSError as exc:
        return exc.strerror or str(exc)
    tmp.unlink(missing_ok=True)
    return None


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
        error = _output_error(exc, dest, tmp)  # before unlinking: the temp file's size is evidence
        tmp.unlink(missing_ok=True)
        raise error from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``dest``; on success it replaces ``dest`` (an earlier output).

    The folder counterpart of :func:`atomic_path` (same ``.tmp-<pid>`` name): the
    files are fsynced before the rename, and an earlier ``dest`` is removed only
    once the new folder is in place. The caller checks ``dest`` before any work.
    """
    dest = Path(dest)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for folder, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(folder, name), "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_folder(Path(folder))
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_folder(dest.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        error = _output_error(exc, dest, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise error from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _output_error(exc: OSError, dest: Path, tmp: Path) -> OSError:
    """``exc`` as a :func:`write_failure` when it is about writing the output, else unchanged."""
    name = exc.filename
    if name is not None and not any(Path(name) == p or p in Path(name).parents for p in (tmp, dest)):
        return exc  # about another file (e.g. reading the model), not about the output
    return write_failure(dest, tmp, exc)


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


_STAGED: contextvars.ContextVar[tuple[tuple[Path, Path], ...]] = contextvars.ContextVar("staged", default=())


@contextlib.contextmanager
def staged_for(staged: Path, dest: Path) -> Iterator[None]:
    """Inside the block, a failure to write ``staged`` names ``dest``, the path the user gave.

    For outputs built elsewhere (apply's work folder) and moved to ``dest`` when complete.
    """
    token = _STAGED.set((*_STAGED.get(), (Path(staged), Path(dest))))
    try:
        yield
    finally:
        _STAGED.reset(token)


def _destination_of(path: Path) -> Path | None:
    """The user's path a staged file becomes, or None when ``path`` is not staged."""
    return next((dest for staged, dest in reversed(_STAGED.get()) if staged == Path(path)), None)


def _shown(path: Path, detail: str = "") -> str:
    """``path`` as a message names it: a staged file as its destination, plus where it was staged."""
    dest = _destination_of(path)
    notes = ([f"staged in {path}"] if dest is not None else []) + ([detail] if detail else [])
    return f"{dest or path}" + (f" ({'; '.join(notes)})" if notes else "")


def write_failure(dest: Path, tmp: Path, exc: OSError) -> OutputError:
    """An OutputError saying which limit stopped writing ``dest``: file size, disk space, permissions.

    Short writes (numpy's ``tofile``) raise OSError without an errno, so the
    file-size limit and the free space are also checked directly. A staged
    ``dest`` (:func:`staged_for`) is named by the user's path.
    """
    code, limit = exc.errno, _file_size_limit()
    with contextlib.suppress(OSError):
        if code is None and limit is not None and tmp.stat().st_size >= limit:
            code = errno.EFBIG
    if code == errno.EFBIG:
        if limit is None:
            return OutputError(f"{_shown(dest)} grew past the largest file its filesystem allows",
                               hint="write to a filesystem without a small file-size limit (e.g. not FAT32)")
        return OutputError(
            f"file size limit hit while writing {_shown(dest)}: this process may write at most {limit} bytes per file",
            hint="raise the limit (ulimit -f unlimited) or write a smaller output",
        )
    free = _free_bytes(dest.parent)
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < _NEARLY_FULL):
        left = f"{free} bytes left on its filesystem" if free is not None else ""
        hint = "free some space or write elsewhere"
        if _destination_of(dest) is not None:
            hint += " (--work-dir puts the staging folder on another disk)"
        return OutputError(f"disk full while writing {_shown(dest, left)}", hint=hint)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(
            f"cannot write {_shown(dest)}: its folder is not writable ({exc.strerror})",
            hint="choose a folder you can write to, or fix its permissions",
        )
    return OutputError(f"cannot write {_shown(dest)}: {exc}", hint="check free disk space and permissions")


_NEARLY_FULL = 1 << 20  # bytes; less than this left after a failed write means the disk filled up


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    is_root = getattr(os, "geteuid", lambda: -1)() == 0  # root may use the reserved blocks
    return (st.f_bfree if is_root else st.f_bavail) * st.f_frsize


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
