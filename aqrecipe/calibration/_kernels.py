"""Numba kernels for the calibration statistics (imported lazily by ``stats``).

Each channel is reduced by exactly one thread, token by token in row order, so
the float64 sums do not depend on the thread count or scheduling: the result is
bit-identical to the sequential numpy twin in :mod:`aqrecipe.calibration.stats`.
"""

from __future__ import annotations

import numba
import numpy as np

# Channels per parallel task: a row slice of this width stays in L1 while the
# task walks the tokens, and rows are read contiguously.
CHANNEL_BLOCK = 64


@numba.njit(parallel=True, cache=True, nogil=True)
def accumulate_channels(x, sum2, sum1, absmax):  # pragma: no cover - compiled
    n_tokens, n_channels = x.shape
    n_blocks = (n_channels + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    for b in numba.prange(n_blocks):
        c0 = b * CHANNEL_BLOCK
        w = min(n_channels, c0 + CHANNEL_BLOCK) - c0
        # Block-local accumulators: they cannot alias x, so the channel loop vectorises
        # (one SIMD lane per channel; each channel's sum still runs token by token).
        s2 = np.empty(CHANNEL_BLOCK, dtype=np.float64)
        s1 = np.empty(CHANNEL_BLOCK, dtype=np.float64)
        mx = np.empty(CHANNEL_BLOCK, dtype=np.float32)
        nan = np.zeros(CHANNEL_BLOCK, dtype=np.bool_)
        for j in range(w):
            s2[j] = sum2[c0 + j]
            s1[j] = sum1[c0 + j]
            mx[j] = absmax[c0 + j]
        for t in range(n_tokens):
            for j in range(w):
                v32 = x[t, c0 + j]
                v = np.float64(v32)
                s2[j] += v * v
                s1[j] += v
                a = abs(v32)
                # a NaN fails the comparison and is remembered in `nan`; a NaN already in
                # mx stays (nothing compares greater): the NaN-propagating rule of np.maximum
                mx[j] = a if a > mx[j] else mx[j]
                nan[j] |= v32 != v32
        for j in range(w):
            sum2[c0 + j] = s2[j]
            sum1[c0 + j] = s1[j]
            absmax[c0 + j] = np.float32(np.nan) if nan[j] else mx[j]
