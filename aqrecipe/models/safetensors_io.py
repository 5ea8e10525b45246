"""Reading safetensors files ourselves: header validation and lazy tensor access.

A safetensors file is an 8-byte little-endian header length, a JSON header
(``name -> {dtype, shape, data_offsets}``) and the raw little-endian data.
Everything in the header is checked against the file size before any tensor
memory is touched, so a truncated or hostile file fails with a clear error.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aqrecipe.errors import CorruptFileError, UnsupportedDtypeError

#: safetensors dtype -> bytes per element, for the dtypes aqrecipe reads.
SUPPORTED_DTYPES: dict[str, int] = {"F32": 4, "F16": 2, "BF16": 2}

_NUMPY_STORAGE = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}

# Elements per read when F16/BF16 data are widened to float32 (8 MiB of float32).
_CHUNK_ELEMENTS = 2 << 20

# A header larger than this is not a model header (real ones are a few MB at most).
_MAX_HEADER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class RawTensor:
    """One header entry: where a tensor's bytes lie in its file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset in the file
    nbytes: int


def _corrupt(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path}: {what}",
        hint="the file is truncated or not a safetensors file; download or convert it again",
    )


def read_header(path: Path) -> list[RawTensor]:
    """Parse and validate the header of one safetensors file.

    Raises CorruptFileError for a truncated file or offsets outside the data,
    UnsupportedDtypeError for dtypes other than F32/F16/BF16.
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < 8:
        raise _corrupt(path, f"only {file_size} bytes, too short for a safetensors header")
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        # Checked before reading: a hostile length must not make us allocate it.
        if header_len > file_size - 8:
            raise _corrupt(path, f"header claims {header_len} bytes but the whole file has {file_size}")
        if header_len > _MAX_HEADER_BYTES:
            raise _corrupt(path, f"header claims {header_len} bytes, more than any model header needs")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"header is not valid JSON ({exc})") from None
    except RecursionError:  # a header is a flat table; deep nesting is hostile, not a model
        raise _corrupt(path, "header is nested too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")

    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: list[RawTensor] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors.append(_parse_entry(path, name, entry, data_start, data_size))
    _check_no_overlap(path, tensors)
    return tensors


def _check_no_overlap(path: Path, tensors: list[RawTensor]) -> None:
    """Two tensors sharing bytes means the header lies (one would silently alias the other)."""
    previous: RawTensor | None = None
    for t in sorted((t for t in tensors if t.nbytes), key=lambda t: t.offset):
        if previous is not None and t.offset < previous.offset + previous.nbytes:
            raise _corrupt(path, f"tensors {previous.name!r} and {t.name!r} overlap in the data section")
        previous = t


def _parse_entry(path: Path, name: str, entry: object, data_start: int, data_size: int) -> RawTensor:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise _corrupt(path, f"header entry {name!r} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    valid_shape = isinstance(shape, list) and all(_is_count(d) for d in shape)
    valid_offsets = isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
    if not (valid_shape and valid_offsets):
        raise _corrupt(path, f"header entry {name!r} has a malformed shape or data_offsets")
    begin, end = offsets
    if end < begin:
        raise _corrupt(path, f"tensor {name!r} data_offsets [{begin}, {end}] end before they begin")
    if end > data_size:
        raise _corrupt(
            path,
            f"tensor {name!r} data_offsets [{begin}, {end}] lie outside the {data_size} data bytes: "
            "the file is truncated or its header is wrong",
        )
    if not isinstance(dtype, str):
        raise _corrupt(path, f"header entry {name!r} has dtype {str(dtype)[:60]}, not a dtype name")
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(
            f"{path}: tensor {name!r} has dtype {dtype}, which aqrecipe does not read",
            hint=f"supported dtypes: {', '.join(SUPPORTED_DTYPES)}; integer or FP8 weights mean an already "
            "quantized checkpoint (GPTQ, AWQ, FP8, ...): start from the original float checkpoint",
        )
    nbytes = math.prod(shape) * SUPPORTED_DTYPES[dtype]
    if end - begin != nbytes:
        raise _corrupt(
            path, f"tensor {name!r} spans {end - begin} bytes but {dtype}{shape} needs {nbytes}"
        )
    return RawTensor(name, dtype, tuple(shape), path, data_start + begin, nbytes)


def _is_count(value: object) -> bool:
    # JSON true/false parse as Python bools, which are ints: not a size.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_tensor(raw: RawTensor) -> np.ndarray:
    """The tensor's values as a new float32 array (BF16 widened exactly).

    The bytes are read with plain file reads, not through a memory map: a map's
    pages count towards the process's resident memory while it lives, which
    doubled a large tensor's footprint during the copy. F32 is read straight
    into the result; F16/BF16 go through a small chunk buffer, so the peak is
    the float32 result plus at most ``_CHUNK_ELEMENTS`` stored elements.
    """
    count = math.prod(raw.shape)
    values = np.empty(count, dtype=np.float32)
    if count == 0:
        return values.reshape(raw.shape)
    with open(raw.file, "rb", buffering=0) as fh:
        fh.seek(raw.offset)
        if raw.dtype == "F32" and sys.byteorder == "little":
            _read_exact(fh, memoryview(values).cast("B"), raw)
            return values.reshape(raw.shape)
        chunk = np.empty(min(count, _CHUNK_ELEMENTS), dtype=_NUMPY_STORAGE[raw.dtype])
        bits = values.view(np.uint32)
        for start in range(0, count, chunk.size):
            part = chunk[: min(chunk.size, count - start)]
            _read_exact(fh, memoryview(part).cast("B"), raw)
            if raw.dtype == "BF16":
                # bf16 is the top half of an f32: widen the bits, then shift them up.
                out = bits[start : start + part.size]
                out[:] = part
                out <<= 16
            else:
                values[start : start + part.size] = part  # exact widening
    return values.reshape(raw.shape)


def _read_exact(fh, buf: memoryview, raw: RawTensor) -> None:
    """Fill ``buf`` from ``fh``'s current position; a short file is a CorruptFileError."""
    done = 0
    while done < len(buf):
        got = fh.readinto(buf[done:])
        if not got:
            raise _corrupt(raw.file, f"tensor {raw.name!r} is cut short: the file ends inside its data "
                                     "(it shrank after its header was read)")
        done += got
