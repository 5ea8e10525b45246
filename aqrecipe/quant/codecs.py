"""Pack float weights into GGUF blocks and unpack them, via the Rust codecs.

This is the public, validated face of the private extension
:mod:`aqrecipe._packer`. Rows (the last axis) are independent: they are
encoded in parallel with the GIL released, and the bytes never depend on the
thread count. Errors are :class:`aqrecipe.errors.CodecError` subclasses.

>>> import numpy as np
>>> from aqrecipe.quant.codecs import quantize, dequantize
>>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
>>> q = quantize(w, "Q8_0")
>>> q.shape, q.dtype
((2, 34), dtype('uint8'))
>>> bool(np.abs(dequantize(q, "Q8_0", w.shape) - w).max() < 0.01)
True
"""

from __future__ import annotations

import math
import operator
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from aqrecipe import _packer
from aqrecipe.quant.blocktypes import layout
from aqrecipe.errors import ImportanceError, RowLengthError, ShapeMismatchError

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
    rows = arr.reshape(-1, row_len) if arr.size else np.empty((math.prod(lead), row_len), np.float32)
    imp = None if importance is None else _importance(importance, row_len)
    out = _packer.quantize(rows, type_name, imp, ternary_absmean)
    # Fits whenever arr does: a row's bytes are at most 4 per weight, as in arr's float32.
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
    dims = _shape(shape)
    return _packer.dequantize(_as_bytes(data), type_name, list(dims))


def row_bytes(type_name: str, row_len: int) -> int:
    """Bytes of one row of ``row_len`` weights (raises RowLengthError if it does not fit)."""
    layout(type_name)
    n = _index(row_len)
    if n is None or not 0 <= n <= sys.maxsize:
        raise RowLengthError(
            f"row length {row_len!r} is not an integer from 0 to {sys.maxsize}",
            hint="give the number of weights in one row (the tensor's shape[-1])",
        )
    return int(_packer.row_bytes(type_name, n))


def _as_bytes(data: Any) -> npt.NDArray[np.uint8]:
    """The encoded bytes as a flat, C-contiguous uint8 array."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        arr = np.asarray(data)
        if arr.ndim == 0:  # a scalar's bytes: a 0-d array cannot change its itemsize
            arr = arr.reshape(1)
        if arr.dtype != np.uint8:
            arr = arr.view(np.uint8) if arr.dtype.kind in "iuf" and arr.flags.c_contiguous else arr.astype(np.uint8)
        return np.ascontiguousarray(arr).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ShapeMismatchError(
            f"cannot read encoded bytes from {type(data).__name__}: {exc}",
            hint="pass the packed tensor as bytes or a uint8 array",
        ) from None


def _index(value: Any) -> int | None:
    """``value`` as an exact integer (int, numpy integer), or None (floats are not shapes)."""
    try:
        return operator.index(value)
    except TypeError:
        return None


def _shape(shape: Any) -> tuple[int, ...]:
    """A decoded tensor's shape: integers from 0 to sys.maxsize, at least one of them.

    Rust checks the sizes the shape implies (element and byte counts); this refuses
    what cannot be a dimension at all (a negative, a float, a value past 2**63 - 1).
    """
    hint = "give the decoded tensor's shape as non-negative integers, e.g. (rows, row_len)"
    one = _index(shape)
    if one is not None:
        dims: tuple[Any, ...] = (one,)
    elif isinstance(shape, (str, bytes)):
        raise ShapeMismatchError(f"shape must be a sequence of integers, got {shape!r}", hint=hint)
    else:
        try:
            dims = tuple(shape)
        except TypeError:
            raise ShapeMismatchError(f"shape must be a sequence of integers, got {shape!r}", hint=hint) from None
    if not dims:
        raise ShapeMismatchError("shape () has no dimensions; the last one is the row length", hint=hint)
    out = []
    for i, d in enumerate(dims):
        n = _index(d)
        if n is None or not 0 <= n <= sys.maxsize:
            raise ShapeMismatchError(
                f"shape {dims!r}: dimension {i} is {d!r}, not an integer from 0 to {sys.maxsize}", hint=hint
            )
        out.append(n)
    return tuple(out)


def _as_float32(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged nested lists
        raise ShapeMismatchError(
            f"cannot quantize {type(x).__name__}: {exc}", hint="pass a rectangular array of real weights"
        ) from None
    if arr.dtype.kind not in "fiub":
        raise ShapeMismatchError(
            f"cannot quantize an array of dtype {arr.dtype}", hint="pass real-valued weights (float32 preferred)"
        )
    if arr.ndim == 0:
        raise ShapeMismatchError(
            "cannot quantize a scalar", hint="pass a 1-D row or a 2-D [rows, row_len] matrix"
        )
    try:
        return np.ascontiguousarray(arr, dtype=np.float32)
    except ValueError:  # an empty array whose axes numpy cannot hold as float32
        raise ShapeMismatchError(
            f"an array of shape {arr.shape} is too large to hold as float32",
            hint="drop the empty tensor, or give it real axis lengths",
        ) from None


#: Largest importance the codecs are given. Their searches accumulate
#: ``importance * |x| * code**2`` over a block in float32 lanes; importance near
#: 1e35 overflows those sums to infinity and wrecks the tensor silently (issue 16:
#: IQ4_NL and Q6_K at relative error 0.84 instead of 0.07). Real imatrices are mean
#: squared activations, at most ~1e10 even with a super-weight boost, far below.
IMPORTANCE_CEILING = 2.0**40


def _importance(importance: npt.ArrayLike, row_len: int) -> npt.NDArray[np.float32]:
    imp = np.asarray(importance, dtype=np.float32)
    if imp.ndim != 1:
        raise ImportanceError(
            f"importance must be 1-D (one weight per column), got shape {imp.shape}",
            hint=f"pass a vector of {row_len} non-negative weights",
        )
    return bounded_importance(np.ascontiguousarray(imp))


def bounded_importance(imp: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``imp`` scaled by a power of two so its largest value is at most :data:`IMPORTANCE_CEILING`.

    Only the importance-weighted *error* is minimised, and scaling every weight by
    2**-k scales every sum of the search by exactly 2**-k (float exponents shift;
    no mantissa changes), so the codes and bytes are those of the unscaled
    imatrix, as long as nothing overflowed. Vectors already below the ceiling (all
    real ones) are returned as they are. NaN, infinities and negative values are
    left for the codec to refuse (ImportanceError naming the column).
    """
    if imp.size == 0:
        return imp
    top = float(np.max(imp))
    if not (top > IMPORTANCE_CEILING) or not np.isfinite(top):
        return imp
    # top < 2**exponent(top), and the ceiling is 2**(exponent(ceiling) - 1): after the shift, top < ceiling
    shift = int(np.frexp(top)[1]) - (int(np.frexp(IMPORTANCE_CEILING)[1]) - 1)
    return np.ldexp(imp, -shift).astype(np.float32)
