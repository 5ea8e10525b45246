"""Pack float weights into GGUF blocks and unpack them, via the Rust codecs.

This is the public, validated face of the private extension
:mod:`aqrecipe._packer`. Rows (the last axis) are independent: they are
encoded in parallel with the GIL released, and the bytes never depend on the
thread count. Errors are :class:`aqrecipe.errors.CodecError` subclasses.

>>> import numpy as np
>>> from aqrecipe.codecs import quantize, dequantize
>>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
>>> q = quantize(w, "Q8_0")
>>> q.shape, q.dtype
((2, 34), dtype('uint8'))
>>> bool(np.abs(dequantize(q, "Q8_0", w.shape) - w).max() < 0.01)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import _packer
from .blocktypes import layout
from .errors import ImportanceError, ShapeMismatchError

__all__ = ["quantize", "dequantize", "row_bytes"]


def quantize(
    x: npt.ArrayLike,
    type_name: str,
    importance: npt.ArrayLike | None = None,
    *,
    ternary_absmean: bool = False,
) -> npt.NDArray[np.uint8]:
    """Encode ``x`` row by row into blocks of ``type_name``.

    Args:
        x: real-valued weights; converted to C-contiguous float32. The last axis
            is the row (a GGUF row, i.e. the input dimension); a 1-D array is
            one row and leading axes are kept.
        type_name: GGML type name (``"Q4_K"``, ``"Q8_0"``, ...).
        importance: optional per-column weights (an imatrix row, ``x.shape[-1]``
            finite, non-negative values). The encoder then minimises the
            importance-weighted error; types with a reference encoder give
            different (better for that weighting) bytes.
        ternary_absmean: TQ1_0 / TQ2_0 only: scale blocks by mean |x|
            (BitNet b1.58) instead of max |x|.

    Returns:
        uint8 array of shape ``x.shape[:-1] + (row_bytes,)``; for a 2-D input
        ``(rows, row_bytes)``.

    Raises:
        UnknownTypeError, RowLengthError, ShapeMismatchError, ImportanceError,
        NonFiniteWeightError (with the row and column of the first NaN/Inf).
    """
    layout(type_name)  # unknown names fail here, listing the allowed ones
    arr = _as_float32(x)
    lead, row_len = arr.shape[:-1], arr.shape[-1]
    rows = arr.reshape(-1, row_len) if arr.size else np.empty((int(np.prod(lead)), row_len), np.float32)
    imp = None if importance is None else _importance(importance, row_len)
    out = _packer.quantize(rows, type_name, imp, ternary_absmean)
    return out.reshape(*lead, out.shape[-1])


def dequantize(data: Any, type_name: str, shape: int | tuple[int, ...] | list[int]) -> npt.NDArray[np.float32]:
    """Decode blocks of ``type_name`` back to float32 of ``shape``.

    Args:
        data: the encoded bytes: a uint8 array of any shape (only its bytes
            count), or ``bytes`` / ``bytearray`` / ``memoryview``.
        type_name: GGML type name.
        shape: the shape of the decoded tensor; its last entry is the row length.

    Raises:
        UnknownTypeError, RowLengthError, ByteLengthError, ShapeMismatchError.
    """
    layout(type_name)
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not dims or any(int(d) < 0 for d in dims):
        raise ShapeMismatchError(
            f"invalid shape {dims!r}", hint="give the decoded tensor's shape, e.g. (rows, row_len)"
        )
    if isinstance(data, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(data, dtype=np.uint8)
    else:
        arr = np.asarray(data)
        if arr.dtype != np.uint8:
            arr = arr.view(np.uint8) if arr.dtype.kind in "iuf" and arr.flags.c_contiguous else arr.astype(np.uint8)
        buf = np.ascontiguousarray(arr).reshape(-1)
    return _packer.dequantize(buf, type_name, [int(d) for d in dims])


def row_bytes(type_name: str, row_len: int) -> int:
    """Bytes of one row of ``row_len`` weights (raises RowLengthError if it does not fit)."""
    layout(type_name)
    return int(_packer.row_bytes(type_name, int(row_len)))


def _as_float32(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ShapeMismatchError(
            f"cannot quantize an array of dtype {arr.dtype}", hint="pass real-valued weights (float32 preferred)"
        )
    if arr.ndim == 0:
        raise ShapeMismatchError(
            "cannot quantize a scalar", hint="pass a 1-D row or a 2-D [rows, row_len] matrix"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _importance(importance: npt.ArrayLike, row_len: int) -> npt.NDArray[np.float32]:
    imp = np.asarray(importance, dtype=np.float32)
    if imp.ndim != 1:
        raise ImportanceError(
            f"importance must be 1-D (one weight per column), got shape {imp.shape}",
            hint=f"pass a vector of {row_len} non-negative weights",
        )
    return np.ascontiguousarray(imp)
