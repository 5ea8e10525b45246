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
        c1 = min(n_channels, c0 + CHANNEL_BLOCK)
        for t in range(n_tokens):
            for c in range(c0, c1):
                v32 = x[t, c]
                v = np.float64(v32)
                sum2[c] += v * v
                sum1[c] += v
                a = abs(v32)
                m = absmax[c]
                # NaN-propagating max, the same rule as np.maximum
                if m == m and not (a <= m):
                    absmax[c] = a
