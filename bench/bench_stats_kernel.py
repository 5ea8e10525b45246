"""Speed of the calibration statistics kernels against the speed of reading the block.

Each kernel walks a float32 [tokens, channels] block once; the yardstick is
``np.sum`` of the same block (one vectorised read, no float64 work), so a ratio
near 1 means the kernel runs at memory speed. Shapes are the demo model's
linear inputs in one 4096-token batch (576 = hidden, 1536 = ffn) and a
64-token block that stays in L2. Best of several repeats; one thread.

Usage: python bench/bench_stats_kernel.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np


def _best_ns_per_value(fn: Callable[[], object], values: int, repeats: int) -> float:
    fn()  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / values * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()

    from aqrecipe.calibration.stats import ChannelStats, update_absmax

    rng = np.random.default_rng(0)
    rows = []
    for tokens, channels in ((4096, 576), (4096, 1536), (64, 1536)):
        x = rng.standard_normal((tokens, channels), dtype=np.float32)
        reps = max(1, 4096 // tokens)  # the same number of values per timing
        values = reps * x.size
        stats, absmax = ChannelStats(channels), np.zeros(channels, np.float32)

        def fused(b=x, s=stats, n=reps):
            for _ in range(n):
                s.update(b)

        def max_only(b=x, m=absmax, n=reps):
            for _ in range(n):
                update_absmax(m, b)

        def read(b=x, n=reps):
            for _ in range(n):
                b.sum()

        read_ns = _best_ns_per_value(read, values, args.repeats)
        fused_ns = _best_ns_per_value(fused, values, args.repeats)
        max_ns = _best_ns_per_value(max_only, values, args.repeats)
        rows.append({"block": f"{tokens}x{channels}", "np_sum_ns": round(read_ns, 3),
                     "stats_ns": round(fused_ns, 3), "stats_vs_read": round(fused_ns / read_ns, 2),
                     "absmax_ns": round(max_ns, 3), "absmax_vs_read": round(max_ns / read_ns, 2)})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
