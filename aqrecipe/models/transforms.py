"""Weight transforms llama.cpp expects on conversion from HF layout."""

from __future__ import annotations

import numpy as np


def permute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from HF's half-split rope layout to llama.cpp's interleaved one.

    Within each head HF stores the rotated pairs as (first half, second half);
    llama.cpp's llama graph wants them adjacent. Works for weights [rows, in]
    and biases [rows]. transformers applies the inverse when it loads a GGUF.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    tail = weight.shape[1:]
    grouped = weight.reshape(n_heads, 2, half, *tail)
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`permute_rope_rows` (llama.cpp layout back to HF)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    tail = weight.shape[1:]
    grouped = weight.reshape(n_heads, half, 2, *tail)
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))
