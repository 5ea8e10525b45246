"""Packing throughput per type (million weights/s) on the demo model's tensors, 2 threads.

Usage: RAYON_NUM_THREADS=2 python bench/bench_pack.py [TYPE ...]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

os.environ.setdefault("RAYON_NUM_THREADS", "2")

from aqrecipe.quant import codecs  # noqa: E402
from aqrecipe.quant.blocktypes import fits  # noqa: E402
from aqrecipe.models import open_model  # noqa: E402

DEFAULT_TYPES = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K",
                 "Q2_K", "Q3_K", "IQ2_XXS", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"]


def main(types: list[str]) -> None:
    source = open_model("demo")
    tensors = {}
    for t in source.tensors:
        if len(t.shape) == 2 and ("ffn_down" in t.gguf_name or "ffn_up" in t.gguf_name) and t.gguf_name.startswith("blk.0"):
            tensors[t.gguf_name] = source.read(t.hf_name)
    print(f"| type | tensor | weights | Mweights/s (threads={os.environ['RAYON_NUM_THREADS']}) |")
    print("|---|---|---|---|")
    for type_name in types:
        for name, w in tensors.items():
            if not fits(type_name, w.shape[1]):
                continue
            importance = np.ones(w.shape[1], np.float32) if type_name in ("IQ2_XXS", "IQ1_S", "IQ1_M") else None
            codecs.quantize(w[:8], type_name, None if importance is None else importance)  # warm tables
            t0 = time.perf_counter()
            codecs.quantize(w, type_name, importance)
            dt = time.perf_counter() - t0
            print(f"| {type_name} | {name} {w.shape[0]}x{w.shape[1]} | {w.size:,} | {w.size / dt / 1e6:.1f} |")
            break


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_TYPES)
