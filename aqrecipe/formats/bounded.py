"""Bounded whole-file reads: every file aqrecipe reads whole goes through :func:`read_bounded`.

A file read whole is read into memory, so its size must be known to be sane
before the first byte is read: ``aqrecipe validate /dev/zero`` used to grow
without bound, and a FIFO named as a recipe blocked forever. The reader
therefore

* refuses anything that is not a regular file (a folder, a character or block
  device, a FIFO, a socket) without reading it: the file is opened non-blocking
  (a FIFO does not wait for a writer) and checked again on the open descriptor,
  so a path swapped between the check and the open is caught too;
* refuses a file larger than its kind's limit (:data:`LIMITS`, one table) before
  reading, naming the file, its size, the limit and how to raise it;
* reads at most ``limit + 1`` bytes, so a file whose size lies (``/proc`` files
  say 0, a file still growing) cannot get past the limit either.

A missing file is not this module's business: ``FileNotFoundError`` (and other
``OSError`` from opening) propagates, because each caller already says what a
missing recipe, plan or imatrix means. Every other refusal is raised as the
caller's own error class (``error=ImatrixError``, ...), so the exit code and the
error code stay those of the input's kind.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from aqrecipe.errors import AqrecipeError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: The most bytes read whole from one file of each kind. Each is far above any real
#: file of that kind and far below what would exhaust memory.
LIMITS: dict[str, int] = {
    "recipe": 1 * MiB,  # a page of YAML; the shipped recipes are under 4 KiB
    "plan": 256 * MiB,  # ~300 bytes per tensor: a 100,000-tensor MoE plan is ~30 MiB
    "json": 128 * MiB,  # a model folder's JSON: config (KiBs), the safetensors index, tokenizer.json (~35 MiB at most)
    "imatrix": 4 * GiB,  # a .dat or GGUF imatrix of a 256-expert MoE is ~1.3 GiB
    "text": 256 * MiB,  # calibration / evaluation text: a run tokenizes a few MiB at most
    "cache": 256 * MiB,  # aqrecipe's own corpus cache (the built-in sample is ~10 MiB)
}
_CHUNK = 1 << 20  # reading on past a file's stated size: 1 MiB at a time
LIMIT_ENV = "AQRECIPE_READ_LIMIT_{kind}"  # e.g. AQRECIPE_READ_LIMIT_TEXT=2GiB raises the text limit
_NOUNS = {"json": "a model folder's JSON files", "cache": "corpus caches"}  # default: "<kind> files"

ErrorFactory = Callable[..., Exception]  # called as error(message, hint=...): an AqrecipeError class fits

_SPECIAL = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB}


def special_kind(mode: int) -> str | None:
    """What a non-regular file is (``"a FIFO (named pipe)"``, ...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _SPECIAL if test(mode)), "a special file")


def limit_for(kind: str) -> int:
    """The byte limit of ``kind`` (a key of :data:`LIMITS`), raised by ``AQRECIPE_READ_LIMIT_<KIND>``."""
    env = LIMIT_ENV.format(kind=kind.upper())
    text = os.environ.get(env)
    if text is None:
        return LIMITS[kind]
    m = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", text.lower())
    if m is None or m.group(2) not in _UNITS:
        raise AqrecipeError(f"{env}={text!r} is not a size", hint=f"give bytes, e.g. {env}=2GiB or {env}=2147483648")
    return int(m.group(1)) * _UNITS[m.group(2)]


def human(n: int) -> str:
    """``n`` bytes as a short size (``3.0 GiB``)."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _refuse_special(path: Path, mode: int, what: str, error: ErrorFactory) -> None:
    kind = special_kind(mode)
    if kind is not None:
        plain = "a file" if kind == "a folder" else "a regular file"
        raise error(f"{what} {str(path)!r} is {kind}, not {plain}",
                    hint="pass the path of a regular file (aqrecipe does not read folders, devices, pipes or "
                         "sockets as files; save the data to a file first)")


def _too_large(path: Path, size: str, kind: str, limit: int, what: str, error: ErrorFactory) -> Exception:
    env = LIMIT_ENV.format(kind=kind.upper())
    noun = _NOUNS.get(kind, f"{kind} files")
    return error(f"{what} {str(path)!r} {size}; {noun} may have at most {limit} bytes ({human(limit)})",
                 hint=f"check that this is the right file (real ones are far smaller); if it is, raise the "
                      f"limit with {env}=<bytes>")


def regular_file_size(path: str | os.PathLike[str], *, kind: str, what: str,
                      error: ErrorFactory = AqrecipeError) -> int:
    """The size of ``path`` once it is known to be a regular file within ``kind``'s limit.

    For files read in pieces or memory-mapped (a GGUF imatrix) rather than with
    :func:`read_bounded`. ``FileNotFoundError`` propagates.
    """
    p = Path(path)
    st = os.stat(p)
    _refuse_special(p, st.st_mode, what, error)
    limit = limit_for(kind)
    if st.st_size > limit:
        raise _too_large(p, f"is {st.st_size} bytes ({human(st.st_size)})", kind, limit, what, error)
    return st.st_size


def read_bounded(path: str | os.PathLike[str], *, kind: str, what: str, error: ErrorFactory = AqrecipeError) -> bytes:
    """The whole of ``path``, refused (``error``) when it is not a regular file or exceeds ``kind``'s limit.

    ``what`` names the file in messages ("recipe file", "plan file", "imatrix").
    ``FileNotFoundError`` and other errors of opening the file propagate unchanged.
    """
    p = Path(path)
    limit = limit_for(kind)
    _refuse_special(p, os.stat(p).st_mode, what, error)  # before opening: opening a device can act on it
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(p, flags)
    try:
        st = os.fstat(fd)
        _refuse_special(p, st.st_mode, what, error)  # the path was swapped for a FIFO after the check
        if st.st_size > limit:
            raise _too_large(p, f"is {st.st_size} bytes ({human(st.st_size)})", kind, limit, what, error)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object closes it now
            data = _read_at_most(fh, st.st_size, limit)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:  # the size lied: a /proc file, or one still being written
        raise _too_large(p, f"holds more than {limit} bytes although its size says {st.st_size} (a /proc file, or "
                            "one still being written)", kind, limit, what, error)
    return data


def _read_at_most(fh: BinaryIO, size: int, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of ``fh``, allocating no more than the file holds.

    ``read(n)`` allocates ``n`` bytes up front, so the first read asks for the stated size
    (+ 1, to see whether there is more); only a file longer than its size said (``/proc``, a
    file being written) is read on, in chunks, until it ends or passes the limit.
    """
    data = fh.read(min(size, limit) + 1)
    if len(data) <= size:
        return data
    parts, total = [data], len(data)
    while total <= limit:
        chunk = fh.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def read_text_bounded(path: str | os.PathLike[str], *, kind: str, what: str, error: ErrorFactory = AqrecipeError,
                      encoding: str = "utf-8") -> str:
    """:func:`read_bounded`, decoded; ``UnicodeDecodeError`` propagates (each caller words it)."""
    return read_bounded(path, kind=kind, what=what, error=error).decode(encoding)
