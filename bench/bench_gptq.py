"""GPTQ rounding (issue 19): what the extra Hessian pass costs, and what GPTQ buys per layer.

Part 1 (``hessian``): the Hessian observer on a 7B-shaped layer (inputs of 4096, 4096, 4096 and
11008 features, as llama-7B's attention input, o_proj input, gate/up input and down_proj input),
fed ``--tokens`` random activations in batches of 4096: time and peak RSS against the stated bound
(:func:`aqrecipe.calibration.hessians.memory_bound`).

Part 2 (``codec``): for every block type, a 512-wide layer with correlated inputs (low rank plus
noise, uneven scales): held-out output error ``||(W - Ŵ) X||²`` of GPTQ relative to round-to-nearest
(both with the same imatrix), and the encode time of each.

Run: ``.venv/bin/python bench/bench_gptq.py [hessian|codec|all]``.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time

import numpy as np


def hessian_part(tokens: int = 4096) -> None:
    from aqrecipe.calibration.hessians import HessianObserver, memory_bound

    widths = {"blk.0.attn_q.weight": 4096, "blk.0.attn_output.weight": 4096, "blk.0.ffn_gate.weight": 4096,
              "blk.0.ffn_down.weight": 11008}
    rng = np.random.default_rng(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:
        obs = HessianObserver(tmp)
        t0 = time.perf_counter()
        for start in range(0, tokens, 4096):
            n = min(4096, tokens - start)
            for name, width in widths.items():
                obs.observe(0, name, rng.standard_normal((n, width), dtype=np.float32), None)
        obs.layer_state(0)
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    bound = memory_bound(list(widths.values()))
    batch = 4096 * 11008 * 4  # one batch of the widest input (the activations the runner hands over)
    print(f"hessian pass, 7B-shaped layer, {tokens} tokens: {seconds:.1f} s "
          f"({tokens / seconds:,.0f} tokens/s for the layer's 4 inputs)")
    print(f"  peak RSS {peak / 2**30:.2f} GiB (process before: {before / 2**30:.2f} GiB); "
          f"stated bound {bound / 2**30:.2f} GiB + one activation batch {batch / 2**30:.2f} GiB; "
          f"observer's own peak sums {obs.peak_bytes / 2**30:.2f} GiB")


def codec_part() -> None:
    from aqrecipe.quant.codecs import dequantize, quantize
    from aqrecipe.quant.rounding import quantize_gptq

    types = ("Q8_0", "Q5_0", "Q4_0", "IQ4_NL", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "IQ2_XXS", "IQ1_M",
             "IQ1_S", "TQ2_0", "TQ1_0")
    rng = np.random.default_rng(0)
    n, rank = 512, 16
    basis = rng.standard_normal((rank, n))
    scale = 0.3 + 2.0 * rng.random(n)
    x = ((rng.standard_normal((16384, rank)) @ basis + 0.3 * rng.standard_normal((16384, n))) * scale)
    x = x.astype(np.float32)
    calib, held = x[:8192], x[8192:]
    h = (calib.T.astype(np.float64) @ calib / len(calib)).astype(np.float32)
    imatrix = np.diag(h).copy()
    w = (0.02 * rng.standard_normal((256, n))).astype(np.float32)

    def err(wq: np.ndarray) -> float:
        return float(np.sum(((w - wq).astype(np.float64) @ held.T.astype(np.float64)) ** 2))

    print(f"{'type':8} {'gptq/rtn':>9} {'+act_order':>10} {'rtn ms':>8} {'gptq ms':>8}   (256 x {n}, held-out X)")
    for t in types:
        t0 = time.perf_counter()
        rtn = dequantize(quantize(w, t, imatrix), t, w.shape)
        t1 = time.perf_counter()
        g = dequantize(quantize_gptq(w, t, h, importance=imatrix), t, w.shape)
        t2 = time.perf_counter()
        ga = dequantize(quantize_gptq(w, t, h, importance=imatrix, act_order=True), t, w.shape)
        e = err(rtn)
        print(f"{t:8} {err(g) / e:9.3f} {err(ga) / e:10.3f} {1e3 * (t1 - t0):8.1f} {1e3 * (t2 - t1):8.1f}")


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("codec", "all"):
        codec_part()
    if which in ("hessian", "all"):
        hessian_part()
