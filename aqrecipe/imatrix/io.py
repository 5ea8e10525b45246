"""Load, save and convert imatrix files (GGUF or legacy .dat, chosen by magic / suffix)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from aqrecipe.errors import ImatrixError
from aqrecipe.formats.bounded import regular_file_size
from aqrecipe.formats.fileio import atomic_output, atomic_path
from aqrecipe.formats.paths import check_write_targets
from aqrecipe.imatrix.dat_format import DEFAULT_CHUNK_SIZE, read_dat_imatrix, write_dat_imatrix
from aqrecipe.imatrix.data import ImatrixData
from aqrecipe.imatrix.gguf_format import read_gguf_imatrix, write_gguf_imatrix

log = logging.getLogger(__name__)


def load_imatrix(path: str | os.PathLike[str], *, chunk_size: int | None = None) -> ImatrixData:
    """Read a GGUF imatrix or a legacy .dat (told apart by the GGUF magic).

    ``chunk_size`` matters only for .dat files (which do not store it): it turns
    their per-chunk means back into sums; default 512, llama.cpp's default.
    """
    p = Path(path)
    if not p.exists():
        raise ImatrixError(f"imatrix {str(p)!r} does not exist", hint="check the path")
    regular_file_size(p, kind="imatrix", what="imatrix", error=ImatrixError)  # a FIFO would block the open
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        return read_gguf_imatrix(p)
    if len(magic) < 4:
        raise ImatrixError(f"imatrix {str(p)!r} is empty or truncated ({len(magic)} bytes)",
                           hint="recompute the imatrix")
    if p.suffix.lower() == ".gguf":  # not parsed as .dat: that would report a misleading layout error
        raise ImatrixError(f"imatrix {str(p)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                           hint="the file is damaged or not an imatrix; recompute it or convert it again")
    return read_dat_imatrix(p, chunk_size or DEFAULT_CHUNK_SIZE)


def format_for(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".gguf":
        return "gguf"
    if suffix == ".dat":
        return "dat"
    raise ImatrixError(
        f"cannot tell the imatrix format of {str(path)!r} from its suffix",
        hint="name the file *.gguf (current llama.cpp format) or *.dat (legacy format)",
    )


def save_imatrix(data: ImatrixData, path: str | os.PathLike[str], *, fmt: str | None = None,
                 chunk_size: int | None = None) -> Path:
    """Write ``data`` atomically as GGUF or .dat (by ``fmt`` or the suffix)."""
    dest = Path(path)
    kind = fmt or format_for(dest)
    if not data.entries:
        raise ImatrixError("refusing to write an empty imatrix", hint="the calibration produced no statistics")
    if kind == "gguf":
        with atomic_path(dest) as tmp:  # gguf-py writes by path
            write_gguf_imatrix(data, tmp)
    elif kind == "dat":
        with atomic_output(dest) as fh:
            write_dat_imatrix(data, fh, chunk_size)
    else:
        raise ImatrixError(f"unknown imatrix format {kind!r}", hint="use gguf or dat")
    return dest


def convert_imatrix(src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                    chunk_size: int | None = None) -> ImatrixData:
    """Convert between .dat and .gguf (formats from the suffixes)."""
    check_write_targets({"destination": Path(dest)}, {"source imatrix": Path(src)})  # the one output-path rule
    dest_format = format_for(dest)  # an unknown suffix is refused before reading anything
    data = load_imatrix(src, chunk_size=chunk_size)
    if dest_format == "dat" and len(data.datasets) > 1:
        log.warning("the .dat format keeps one dataset name; keeping %r of %d", data.datasets[-1], len(data.datasets))
    save_imatrix(data, dest, chunk_size=chunk_size)
    return data
