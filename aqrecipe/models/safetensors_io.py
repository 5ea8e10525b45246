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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, UnsupportedDtypeError

#: safetensors dtype -> bytes per element, for the dtypes aqrecipe reads.
SUPPORTED_DTYPES: dict[str, int] = {"F32": 4, "F16": 2, "BF16": 2}

_NUMPY_STORAGE = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}

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
        if header_len > file_size - 8 or header_len > _MAX_HEADER_BYTES:
            raise _corrupt(path, f"header claims {header_len} bytes but the file has {file_size}")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")

    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: list[RawTensor] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors.append(_parse_entry(path, name, entry, data_start, data_size))
    return tensors


def _parse_entry(path: Path, name: str, entry: object, data_start: int, data_size: int) -> RawTensor:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise _corrupt(path, f"header entry {name!r} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    valid_shape = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    valid_offsets = (
        isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
    )
    if not (valid_shape and valid_offsets):
        raise _corrupt(path, f"header entry {name!r} has a malformed shape or data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _corrupt(
            path,
            f"tensor {name!r} data_offsets [{begin}, {end}] lie outside the {data_size} data bytes",
        )
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(
            f"{path.name}: tensor {name!r} has dtype {dtype}, which aqrecipe does not read",
            hint=f"supported dtypes: {', '.join(SUPPORTED_DTYPES)}; convert the checkpoint to one of them",
        )
    nbytes = math.prod(shape) * SUPPORTED_DTYPES[dtype]
    if end - begin != nbytes:
        raise _corrupt(
            path, f"tensor {name!r} spans {end - begin} bytes but {dtype}{shape} needs {nbytes}"
        )
    return RawTensor(name, dtype, tuple(shape), path, data_start + begin, nbytes)


def read_tensor(raw: RawTensor) -> np.ndarray:
    """The tensor's values as a new float32 array (BF16 widened exactly)."""
    count = math.prod(raw.shape)
    if count == 0:
        return np.zeros(raw.shape, dtype=np.float32)
    mapped = np.memmap(
        raw.file, dtype=_NUMPY_STORAGE[raw.dtype], mode="r", offset=raw.offset, shape=(count,)
    )
    try:
        if raw.dtype == "BF16":
            # bf16 is the top half of an f32: widen the bits, then reinterpret.
            values = (mapped.astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.array(mapped, dtype=np.float32)
    finally:
        del mapped
    return values.reshape(raw.shape)
