"""The legacy ``.dat`` imatrix format (llama.cpp before the GGUF form; still read by it).

Little-endian layout::

    int32 n_entries
    n_entries x { int32 name_len; name bytes; int32 ncall; int32 nval; float32 values[nval] }
    int32 chunk_count           (optional trailer)
    int32 len; dataset bytes    (optional trailer)

``ncall`` is a number of chunks (``ceil(tokens / chunk_size)``) and ``values``
are ``mean(x^2) * ncall``: readers divide by ``ncall``. The chunk size is not
stored; llama.cpp assumes its context size (512 by default) when it turns a
.dat back into sums (``in_sum2 = values * chunk_size``,
``counts = ncall * chunk_size``). We do the arithmetic in float64, so with a
power-of-two chunk size and counts that are multiples of it the conversions
GGUF -> .dat -> GGUF and .dat -> GGUF -> .dat are exact.
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from aqrecipe.errors import ImatrixError
from aqrecipe.formats.bounded import read_bounded
from aqrecipe.imatrix.data import ImatrixData, ImatrixEntry

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 512  # llama.cpp's default context for llama-imatrix
_MAX_NAME = 4096


def encode_dat(data: ImatrixData, chunk_size: int | None = None) -> bytes:
    """The .dat bytes of ``data`` (entries sorted by name, as llama.cpp writes them)."""
    cs = int(chunk_size or data.chunk_size or DEFAULT_CHUNK_SIZE)
    out = bytearray()
    kept = []
    for name in sorted(data.entries):
        e = data.entries[name]
        if not (e.counts > 0).any():
            log.warning("imatrix entry %s has no data; the .dat format cannot hold it - skipped", name)
            continue
        kept.append(name)
    out += struct.pack("<i", len(kept))
    for name in kept:
        e = data.entries[name]
        raw = name.encode("utf-8")
        ncall = int(math.ceil(float(e.counts.max()) / cs))
        counts = e.counts.astype(np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(counts > 0, e.in_sum2.astype(np.float64) / counts * ncall, 1.0)
        vals = values.astype(np.float32).reshape(-1)
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, vals.size)
        out += vals.astype("<f4").tobytes()
    dataset = (data.datasets[-1] if data.datasets else "").encode("utf-8")
    out += struct.pack("<ii", int(data.chunk_count), len(dataset)) + dataset
    return bytes(out)


def write_dat_imatrix(data: ImatrixData, fh: BinaryIO, chunk_size: int | None = None) -> None:
    fh.write(encode_dat(data, chunk_size))


class _Cursor:
    def __init__(self, path: Path, buf: bytes) -> None:
        self.path, self.buf, self.pos = path, buf, 0

    def bad(self, what: str) -> ImatrixError:
        return ImatrixError(
            f"imatrix {str(self.path)!r} is malformed at byte {self.pos}: {what}",
            hint="the file is truncated or not a llama.cpp imatrix; recompute or re-download it",
        )

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def i32(self, what: str) -> int:
        if self.remaining() < 4:
            raise self.bad(f"file ends while reading {what}")
        (v,) = struct.unpack_from("<i", self.buf, self.pos)
        self.pos += 4
        return v

    def take(self, n: int, what: str) -> bytes:
        if n < 0:
            raise self.bad(f"negative {what} ({n})")
        if n > self.remaining():
            raise self.bad(f"{what} of {n} bytes goes beyond the end of the file")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b


def decode_dat(buf: bytes, path: Path = Path("<bytes>"), chunk_size: int = DEFAULT_CHUNK_SIZE) -> ImatrixData:
    """Parse .dat bytes; ``chunk_size`` (not stored in the file) turns means back into sums."""
    cur = _Cursor(path, buf)
    n_entries = cur.i32("the entry count")
    if n_entries < 1:
        raise cur.bad(f"entry count is {n_entries}")
    if n_entries * 12 > cur.remaining():
        raise cur.bad(f"{n_entries} entries cannot fit in {len(buf)} bytes")
    entries: dict[str, ImatrixEntry] = {}
    max_ncall = 0
    for i in range(n_entries):
        name_len = cur.i32(f"entry {i}'s name length")
        if name_len > _MAX_NAME:
            raise cur.bad(f"entry {i}'s name length {name_len} is implausible")
        try:
            name = cur.take(name_len, f"entry {i}'s name").decode("utf-8")
        except UnicodeDecodeError:
            raise cur.bad(f"entry {i}'s name is not UTF-8") from None
        ncall = cur.i32(f"{name}'s call count")
        nval = cur.i32(f"{name}'s value count")
        if ncall < 0:
            raise cur.bad(f"{name} has a negative call count ({ncall})")
        if nval < 1:
            raise cur.bad(f"{name} has {nval} values")
        raw = cur.take(4 * nval, f"{name}'s {nval} values")
        vals = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.isfinite(vals).all():
            raise cur.bad(f"{name} holds non-finite values")
        if (vals < 0).any():
            raise cur.bad(f"{name} holds negative mean squares")
        if name in entries:
            raise cur.bad(f"{name} appears twice")
        with np.errstate(over="ignore"):
            in_sum2 = (vals.astype(np.float64) * chunk_size).astype(np.float32)
        if not np.isfinite(in_sum2).all():  # found by fuzzing: finite means times the chunk size overflow
            raise cur.bad(f"{name}'s values overflow float32 once multiplied by the chunk size {chunk_size}")
        entries[name] = ImatrixEntry(in_sum2[None, :], np.array([ncall * chunk_size], dtype=np.float32))
        max_ncall = max(max_ncall, ncall)
    chunk_count, datasets = max_ncall, []
    if cur.remaining() >= 4:
        chunk_count = cur.i32("the chunk count")
        if chunk_count < 0:
            raise cur.bad(f"negative chunk count ({chunk_count})")
        if cur.remaining() >= 4:
            n = cur.i32("the dataset name length")
            try:
                dataset = cur.take(n, "the dataset name").decode("utf-8")
                datasets = [dataset] if dataset else []  # llama.cpp writes "" when it had no file name
            except UnicodeDecodeError:
                raise cur.bad("the dataset name is not UTF-8") from None
    if cur.remaining():
        raise cur.bad(f"{cur.remaining()} unexpected bytes after the dataset name")
    return ImatrixData(entries, datasets, chunk_count, chunk_size)


def read_dat_imatrix(path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ImatrixData:
    raw = read_bounded(path, kind="imatrix", what="imatrix", error=ImatrixError)
    return decode_dat(raw, Path(path), chunk_size)
