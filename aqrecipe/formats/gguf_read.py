"""Open untrusted GGUF files: a bounds-checked scan of the header before gguf-py reads it.

gguf-py's ``GGUFReader`` trusts the counts in the header. An array whose count
runs past the end of the file makes it loop forever while its memory grows (it
reads empty slices that never advance), and other damage surfaces as
``ValueError``, ``IndexError``, ``KeyError`` or ``UnicodeDecodeError``. So
:func:`open_gguf` first walks the header itself, checking every length, count,
type id and tensor extent against the file size, and only then lets gguf-py
build its (memory-mapped, allocation-free) views. Every problem becomes the
caller's :class:`~aqrecipe.errors.AqrecipeError` subclass.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any, Callable

from aqrecipe.errors import AqrecipeError, GGUFFormatError
from aqrecipe.formats.bounded import special_kind

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MAX_DEPTH = 8  # nested arrays; llama.cpp writes none
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32

ErrorFactory = Callable[[str], AqrecipeError]


class _Bad(Exception):
    """Internal: what is wrong and where (turned into the caller's error class)."""


class _Scanner:
    def __init__(self, buf: Any, size: int, order: str) -> None:
        self.buf, self.size, self.order, self.pos = buf, size, order, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.size - self.pos:
            raise _Bad(f"{what} at byte {self.pos} needs {n} bytes but only {self.size - self.pos} remain")

    def unpack(self, fmt: str, what: str) -> int:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> bytes:
        n = self.unpack("Q", f"the length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` strings (a tokenizer vocabulary: the hot loop of the scan)."""
        buf, size, pos, fmt = self.buf, self.size, self.pos, self.order + "Q"
        for i in range(count):
            if size - pos < 8:
                raise _Bad(f"{what}[{i}] at byte {pos}: the file ends inside its length")
            pos += 8 + struct.unpack_from(fmt, buf, pos)[0]
            if pos > size:
                raise _Bad(f"{what}[{i}] goes beyond the end of the file")
        self.pos = pos

    def value(self, vtype: int, what: str, depth: int = 0) -> int | None:
        """Skip one value; returns it when it is a u32 (for general.alignment)."""
        if vtype in _SCALAR_SIZES:
            if vtype == _UINT32:
                return self.unpack("I", what)
            self.need(_SCALAR_SIZES[vtype], what)
            self.pos += _SCALAR_SIZES[vtype]
        elif vtype == _STRING:
            self.string(what)
        elif vtype == _ARRAY:
            if depth >= _MAX_DEPTH:
                raise _Bad(f"{what} nests arrays more than {_MAX_DEPTH} deep")
            itype = self.unpack("I", f"the item type of {what}")
            count = self.unpack("Q", f"the length of {what}")
            if itype in _SCALAR_SIZES:
                self.need(count * _SCALAR_SIZES[itype], f"{what} ({count} items)")
                self.pos += count * _SCALAR_SIZES[itype]
            elif itype == _STRING:
                self.need(count * 8, f"{what} ({count} items)")
                self.skip_strings(count, what)
            elif itype == _ARRAY:
                self.need(count * 12, f"{what} ({count} items)")
                for i in range(count):
                    self.value(itype, f"{what}[{i}]", depth + 1)
            else:
                raise _Bad(f"{what} has unknown item type {itype}")
        else:
            raise _Bad(f"{what} has unknown value type {vtype}")
        return None


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad(f"{what} is not UTF-8") from None


def _scan_gguf_header(path: Path) -> None:
    """Check every header length, count, type and tensor extent against the file size.

    Raises the internal ``_Bad`` on the first problem; :func:`open_gguf` converts it.
    """
    import gguf

    st = os.stat(path)
    kind = special_kind(st.st_mode)
    if kind is not None:  # mapped, not read, but a FIFO would block the open and a device is not a file
        raise _Bad(f"it is {kind}, not a regular file")
    size = st.st_size
    if size < 24:
        raise _Bad(f"the file has {size} bytes, fewer than a GGUF header")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if bytes(buf[:4]) != b"GGUF":
            raise _Bad("the magic is not GGUF")
        version = struct.unpack_from("<I", buf, 4)[0]
        order = "<" if version & 0xFFFF else ">"  # gguf-py reads byte-swapped files too
        version = struct.unpack_from(order + "I", buf, 4)[0]
        if version not in (2, 3):
            raise _Bad(f"GGUF version {version} is not supported (2 or 3)")
        s = _Scanner(buf, size, order)
        s.pos = 8
        n_tensors = s.unpack("Q", "the tensor count")
        n_kv = s.unpack("Q", "the metadata count")
        if n_kv * 13 + n_tensors * 24 > size - s.pos:  # smallest pair / tensor info: say so up front
            raise _Bad(f"the header claims {n_tensors} tensors and {n_kv} metadata pairs; "
                       f"a file of {size} bytes cannot hold them")
        alignment = _DEFAULT_ALIGNMENT
        for i in range(n_kv):  # each pair takes >= 12 bytes, so EOF ends a huge count
            key = _text(s.string(f"metadata key {i}"), f"metadata key {i}")
            vtype = s.unpack("I", f"the type of {key}")
            value = s.value(vtype, key)
            if key == "general.alignment":
                if vtype != _UINT32 or not value or value & (value - 1):
                    raise _Bad(f"general.alignment must be a u32 power of two, got {value!r}")
                alignment = value
        extents = []
        for i in range(n_tensors):
            name = _text(s.string(f"the name of tensor {i}"), f"the name of tensor {i}")
            n_dims = s.unpack("I", f"the rank of {name}")
            if n_dims > _MAX_DIMS:
                raise _Bad(f"tensor {name} has {n_dims} dimensions (at most {_MAX_DIMS})")
            dims = [s.unpack("Q", f"a dimension of {name}") for _ in range(n_dims)]
            type_id = s.unpack("I", f"the type of {name}")
            offset = s.unpack("Q", f"the offset of {name}")
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
            except (ValueError, KeyError):
                raise _Bad(f"tensor {name} has unknown type id {type_id}") from None
            n_elements = 1
            for d in dims:
                n_elements *= d  # Python ints: no overflow
            if dims and dims[0] % block:
                raise _Bad(f"tensor {name}: row length {dims[0]} is not a multiple of its block size {block}")
            extents.append((name, offset, n_elements // block * type_size))
        data_start = -(-s.pos // alignment) * alignment
        for name, offset, nbytes in extents:
            if data_start + offset + nbytes > size:
                raise _Bad(f"tensor {name} ({nbytes} bytes at offset {offset}) extends beyond the end "
                           f"of the file ({size} bytes; truncated?)")


def _damaged(p: Path, what: str) -> GGUFFormatError:
    return GGUFFormatError(f"{p} is not a readable GGUF file: {what}",
                           hint="the file is truncated or damaged; re-download or re-create it")


def check_gguf(path: str | os.PathLike[str]) -> None:
    """Only the header scan of :func:`open_gguf`, for files another library will read (llama.cpp).

    Skips gguf-py's reader, which takes seconds to minutes on a large vocabulary.
    Raises GGUFFormatError saying what is damaged.
    """
    p = Path(path)
    try:
        _scan_gguf_header(p)
    except (_Bad, struct.error, OSError) as exc:
        raise _damaged(p, str(exc)) from None


def open_gguf(path: str | os.PathLike[str], error: ErrorFactory | None = None) -> Any:
    """A ``gguf.GGUFReader`` for ``path`` once its header has been checked.

    ``error(message)`` builds the exception to raise (default: GGUFFormatError
    saying the file is damaged); any failure of gguf-py is converted the same way.
    """
    import gguf

    p = Path(path)
    make = error or (lambda msg: _damaged(p, msg))
    try:
        _scan_gguf_header(p)
        return gguf.GGUFReader(str(p))
    except _Bad as exc:
        raise make(str(exc)) from None
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, RecursionError,
            struct.error, OSError) as exc:  # UnicodeDecodeError is a ValueError
        raise make(f"{type(exc).__name__}: {exc}") from None
