"""How weights are rounded into a block type: round-to-nearest or GPTQ-style error compensation.

``rtn`` (the default) encodes each block on its own, with the imatrix as the diagonal weight of its
scale and code search: llama.cpp's behaviour. ``gptq`` encodes the columns of a tensor in block
groups (32 or 256 columns, the format's block) and pushes each group's rounding error onto the
columns not yet encoded, through the layer input's Hessian ``H = XᵀX`` (GPTQ's Cholesky form of the
inverse Hessian, damped by ``damp`` × mean(diag H)). Each block is still encoded by the format's own
per-block encoder, on the error-updated weights, so the bytes are an ordinary GGUF tensor.

``act_order`` orders whole block groups by their share of ``diag(H)`` (largest first). GGUF has no
column permutation, so a column-level order (GPTQ's) would break the blocks; inside a group the order
does not matter (the group is encoded at once and its error is propagated by the block formula).
``block_size`` is the lazy-batch width (rounded up to a multiple of the block length); it changes speed
only. The update runs in Rust (:mod:`aqrecipe._packer`), rows in parallel, GIL released.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((64, 512)).astype(np.float32)
>>> x[32:] = x[:32] + 0.01 * x[32:]          # two blocks see almost the same input
>>> w = rng.standard_normal((4, 64)).astype(np.float32)
>>> q = quantize_gptq(w, "Q4_0", x @ x.T)
>>> q.shape
(4, 36)
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from aqrecipe import _packer
from aqrecipe.errors import GptqOptionError, HessianError
from aqrecipe.quant.blocktypes import layout
from aqrecipe.quant.codecs import _as_float32, _importance

__all__ = ["GPTQ_TYPES", "quantize_gptq"]

#: The block types GPTQ rounding is tested on (every block-quantized GGML type).
GPTQ_TYPES: tuple[str, ...] = (
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ2_XXS", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0",
)


def _check_options(damp: float, block_size: int) -> None:
    if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise GptqOptionError(f"damp must be a finite number >= 0, got {damp!r}", hint="GPTQ's usual value is 0.01")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise GptqOptionError(f"block_size must be an integer >= 1, got {block_size!r}", hint="GPTQ's usual value is 128")


def quantize_gptq(
    w: npt.ArrayLike,
    type_name: str,
    hessian: npt.ArrayLike,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    importance: npt.ArrayLike | None = None,
    ternary_absmean: bool = False,
) -> npt.NDArray[np.uint8]:
    """Encode the 2-D ``w`` (rows × row_len, GGUF orientation) with GPTQ rounding.

    Args:
        w: real-valued weights; row ``r`` multiplies the input vector of ``row_len`` features.
        type_name: a block-quantized GGML type (:data:`GPTQ_TYPES`).
        hessian: ``(row_len, row_len)`` ``XᵀX`` of the layer's calibration inputs (any positive
            scale, e.g. summed or averaged over tokens).
        damp: added to ``diag(H)`` as a fraction of its mean before the factorisation.
        block_size: lazy-batch width (speed only).
        act_order: encode block groups in order of decreasing ``sum(diag(H))``.
        importance: per-column weight of each block's search (an imatrix row); default ``diag(H)``.
        ternary_absmean: as in :func:`aqrecipe.quant.codecs.quantize`.

    Returns:
        uint8 ``(rows, row_bytes)``, decodable by any GGUF reader.

    Raises:
        GptqOptionError (bad option or a float type), HessianError (shape, non-finite, not positive
        definite), and the errors of :func:`aqrecipe.quant.codecs.quantize`.
    """
    layout(type_name)
    if type_name not in GPTQ_TYPES:
        raise GptqOptionError(
            f"GPTQ rounding does not apply to {type_name} (a float type)",
            hint=f"use rounding rtn for it, or one of: {', '.join(GPTQ_TYPES)}",
        )
    _check_options(damp, block_size)
    arr = _as_float32(w)
    if arr.ndim != 2:
        raise HessianError(
            f"GPTQ rounding takes a 2-D weight matrix, got shape {arr.shape}",
            hint="pass one tensor (rows, row_len); quantize a 3-D expert tensor one expert at a time",
        )
    row_len = arr.shape[1]
    h = np.asarray(hessian)
    if h.shape != (row_len, row_len):
        raise HessianError(
            f"the Hessian has shape {h.shape}, expected ({row_len}, {row_len}) for weights of shape {arr.shape}",
            hint="pass X^T X of this tensor's own input (one row and column per weight column)",
        )
    h32 = np.ascontiguousarray(h, dtype=np.float32)
    imp = None if importance is None else _importance(importance, row_len)
    return _packer.quantize_gptq(arr, type_name, h32, imp, float(damp), int(block_size), bool(act_order),
                                 ternary_absmean)
