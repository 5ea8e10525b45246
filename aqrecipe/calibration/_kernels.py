"""Numba kernels for the calibration statistics (imported lazily by ``stats``).

Every channel's sums run token by token in row order, in float64: the result is
bit-identical to the sequential numpy twin in :mod:`aqrecipe.calibration.stats`.

The kernels walk the rows of the block four at a time, so each channel's
accumulators are loaded and stored once per four tokens and the channel loop
vectorises (one SIMD lane per channel). That brings them close to the speed of
reading the block (1.0-2.0x ``np.sum`` of it, bench/bench_stats_kernel.py), so
they run on one thread, leaving the other cores to torch.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _column_absmax(x, c, start):  # pragma: no cover - compiled
    """max(start, |x[:, c]|) with NaN propagating, scanned in row order."""
    m = start
    for t in range(x.shape[0]):
        a = abs(x[t, c])
        if a != a:
            return a
        if a > m:
            m = a
    return m


@numba.njit(nogil=True, cache=True)
def _settled_absmax(x, c, before, running, maybe_nan):  # pragma: no cover - compiled
    """The column's new max |x|: NaN stays NaN; a column that may hold a NaN (rare) is
    rescanned for the NaN-propagating max of ``np.maximum``; otherwise the running max."""
    if before != before:
        return before
    return _column_absmax(x, c, before) if maybe_nan else running


@numba.njit(nogil=True, cache=True)
def _max_abs4(m, a, b, c, d):  # pragma: no cover - compiled
    """max(m, |a|, |b|, |c|, |d|) in that order; a NaN fails every comparison and is dropped
    (the callers detect NaN separately and rescan such columns with :func:`_column_absmax`)."""
    q = abs(a)
    m = q if q > m else m
    q = abs(b)
    m = q if q > m else m
    q = abs(c)
    m = q if q > m else m
    q = abs(d)
    return q if q > m else m


@numba.njit(nogil=True, cache=True)
def _add_four_rows(x, t, s2, s1, mx):  # pragma: no cover - compiled
    for c in range(x.shape[1]):
        a32, b32, c32, d32 = x[t, c], x[t + 1, c], x[t + 2, c], x[t + 3, c]
        a, b, e, d = np.float64(a32), np.float64(b32), np.float64(c32), np.float64(d32)
        s2[c] = (((s2[c] + a * a) + b * b) + e * e) + d * d
        s1[c] = (((s1[c] + a) + b) + e) + d
        mx[c] = _max_abs4(mx[c], a32, b32, c32, d32)


@numba.njit(nogil=True, cache=True)
def _add_row(x, t, s2, s1, mx):  # pragma: no cover - compiled
    for c in range(x.shape[1]):
        a32 = x[t, c]
        a = np.float64(a32)
        s2[c] += a * a
        s1[c] += a
        q = abs(a32)
        mx[c] = q if q > mx[c] else mx[c]


@numba.njit(nogil=True, cache=True)
def accumulate_channels(x, sum2, sum1, absmax):  # pragma: no cover - compiled
    n_tokens = x.shape[0]
    # local accumulators cannot alias x, which lets the channel loops vectorise
    s2, s1, mx = sum2.copy(), sum1.copy(), absmax.copy()
    t = 0
    while t + 4 <= n_tokens:
        _add_four_rows(x, t, s2, s1, mx)
        t += 4
    while t < n_tokens:
        _add_row(x, t, s2, s1, mx)
        t += 1
    for c in range(x.shape[1]):
        sum2[c] = s2[c]
        sum1[c] = s1[c]
        # a NaN in x always makes the running sum NaN
        absmax[c] = _settled_absmax(x, c, absmax[c], mx[c], s1[c] != s1[c])


@numba.njit(nogil=True, cache=True)
def _max_four_rows(x, t, mx, poison):  # pragma: no cover - compiled
    for c in range(x.shape[1]):
        a, b, e, d = x[t, c], x[t + 1, c], x[t + 2, c], x[t + 3, c]
        mx[c] = _max_abs4(mx[c], a, b, e, d)
        # x - x is 0, or NaN for a NaN or an infinity
        poison[c] += ((a - a) + (b - b)) + ((e - e) + (d - d))


@numba.njit(nogil=True, cache=True)
def accumulate_absmax(x, absmax):  # pragma: no cover - compiled
    """absmax = max(absmax, |x| per column), NaN propagating like ``np.maximum``."""
    n_tokens, n_channels = x.shape
    mx = absmax.copy()
    poison = np.zeros(n_channels, dtype=np.float32)
    t = 0
    while t + 4 <= n_tokens:
        _max_four_rows(x, t, mx, poison)
        t += 4
    for c in range(n_channels):
        m = mx[c]
        for r in range(t, n_tokens):  # the last rows, fewer than four
            m = max(m, abs(x[r, c]))
            poison[c] += x[r, c] - x[r, c]
        # poison is NaN where the column held a NaN or an infinity
        absmax[c] = _settled_absmax(x, c, absmax[c], m, poison[c] != poison[c])
