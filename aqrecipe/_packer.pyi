"""Type stub of the Rust extension ``aqrecipe._packer`` (use :mod:`aqrecipe.quant.codecs`).

Every function raises only :mod:`aqrecipe.errors` exceptions (``CodecError`` subclasses),
wrong arguments included; a Rust panic, which would be a bug, arrives as ``CodecError``
naming the call, never as ``PanicException``.
"""

from typing import Any

import numpy as np
import numpy.typing as npt

def quantize(
    x: npt.NDArray[np.float32],
    type_name: str,
    importance: npt.NDArray[np.float32] | None = None,
    ternary_absmean: bool | None = False,
) -> npt.NDArray[np.uint8]:
    """Encode a C-contiguous 2-D float32 matrix; returns uint8 ``(rows, row_bytes)``."""

def quantize_gptq(
    x: npt.NDArray[np.float32],
    type_name: str,
    hessian: npt.NDArray[np.float32],
    importance: npt.NDArray[np.float32] | None = None,
    damp: float | None = None,
    block_size: int | None = None,
    act_order: bool | None = None,
    ternary_absmean: bool | None = False,
) -> npt.NDArray[np.uint8]:
    """Encode with error-compensating (GPTQ) rounding against ``hessian`` (``(row_len, row_len)``
    float32, C-contiguous: the input's XᵀX); returns uint8 ``(rows, row_bytes)``. ``None`` options
    take the Rust defaults (damp 0.01, block_size 128, act_order False)."""

def dequantize(data: npt.NDArray[np.uint8], type_name: str, shape: list[int]) -> npt.NDArray[np.float32]:
    """Decode C-contiguous uint8 bytes into float32 of ``shape`` (last entry = row length).

    Every size the shape implies is checked before the output is allocated.
    """

def row_bytes(type_name: str, row_len: int) -> int:
    """Bytes of one row of ``row_len`` weights."""

def layouts() -> list[dict[str, Any]]:
    """The block layout table, the one home of the block types and their sizes.

    One dict per type, in table order: ``name`` (str), ``ggml_type_id`` (int),
    ``block_weights`` (int), ``block_bytes`` (int, the sum of the field sizes) and
    ``fields`` (list of ``(name, bytes)`` tuples). :mod:`aqrecipe.quant.blocktypes`
    builds ``LAYOUTS`` / ``TYPE_NAMES`` from it.
    """
