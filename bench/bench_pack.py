"""Packing throughput per type (million weights/s): aqrecipe's encoders against llama.cpp's, same tensors.

What: the float model's (``bench/float_model.py``: the demo with rounding noise, so no type stores
it losslessly) ffn_down tensors of four layers (576 x 1536 each; 1536 is a multiple of every
block size) with one importance vector per tensor, encoded by ``aqrecipe.quant.codecs.quantize`` and
by ``ggml_quantize_chunk`` of the ggml library that llama-cpp-python installed (the function
llama-quantize calls per chunk of rows), with the same number of threads: ours through rayon
(``RAYON_NUM_THREADS``), llama.cpp's as llama-quantize does it, one call per contiguous chunk of
rows on each thread (ctypes releases the GIL during the call). Best of ``--reps`` runs each. The last column checks that
both did the same job: the importance-weighted squared error of aqrecipe's decoding over llama.cpp's
(both decoded by aqrecipe's decoder, byte-compatible with llama.cpp's).

The importance vector is deterministic and positive (a log-normal draw, seed 0), so both encoders
take their imatrix-weighted path, as they do in an imatrix run; ``--no-imatrix`` times the plain path.

Usage: python bench/bench_pack.py [TYPE ...] [--threads 2] [--reps 3] [--no-imatrix]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K",
                 "Q2_K", "Q3_K", "IQ2_XXS", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"]
LAYERS = (0, 9, 19, 29)


def _ggml() -> ctypes.CDLL | None:
    """llama-cpp-python's ggml-base library (holds ggml_quantize_chunk), or None when not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.so*")) or sorted(lib_dir.glob("libggml.so*"))
    if not candidates:
        return None
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize(lib: ctypes.CDLL, w: np.ndarray, type_name: str, importance: np.ndarray | None,
                  threads: int) -> np.ndarray:
    """``w`` encoded by llama.cpp, rows split into ``threads`` contiguous chunks as llama-quantize does."""
    from gguf import GGMLQuantizationType

    from aqrecipe.quant.codecs import row_bytes

    gtype = int(GGMLQuantizationType[type_name])
    rows, n = w.shape
    rb = row_bytes(type_name, n)
    out = np.empty((rows, rb), np.uint8)
    imp = None if importance is None else importance.ctypes.data
    bounds = np.linspace(0, rows, threads + 1).astype(int)

    def chunk(lo: int, hi: int) -> None:
        # start is an element index; dst is the start of the whole output (ggml offsets it itself)
        lib.ggml_quantize_chunk(gtype, w.ctypes.data, out.ctypes.data, lo * n, hi - lo, n, imp)

    workers = [threading.Thread(target=chunk, args=(int(lo), int(hi))) for lo, hi in zip(bounds[:-1], bounds[1:])]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return out


def _weighted_error(w: np.ndarray, decoded: np.ndarray, importance: np.ndarray | None) -> float:
    """Importance-weighted squared error of a decoding (what both encoders minimise)."""
    weight = np.ones(w.shape[1]) if importance is None else importance.astype(np.float64)
    return float((((w - decoded).astype(np.float64) ** 2) * weight).sum())


def best_seconds(fn, reps: int) -> float:
    """The fastest of ``reps`` timed calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("types", nargs="*", default=DEFAULT_TYPES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-imatrix", action="store_true")
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before the extension starts its pool

    from aqrecipe.models import open_model
    from aqrecipe.quant import codecs

    from float_model import float_demo

    source = open_model(float_demo())
    by_name = {t.gguf_name: t for t in source.tensors}
    w = np.ascontiguousarray(np.concatenate(
        [source.read(by_name[f"blk.{i}.ffn_down.weight"].hf_name) for i in LAYERS]), np.float32)
    rng = np.random.default_rng(0)
    importance = None if args.no_imatrix else rng.lognormal(0.0, 1.0, w.shape[1]).astype(np.float32)
    lib = _ggml()
    if lib is None:
        print("llama_cpp is not installed: only aqrecipe's column is measured", file=sys.stderr)

    print(f"{w.shape[0]} x {w.shape[1]} weights ({w.size:,}), threads={args.threads}, best of {args.reps}, "
          f"importance {'none' if importance is None else 'log-normal'}\n")
    print("| type | aqrecipe, M weights/s | llama.cpp, M weights/s | aqrecipe / llama.cpp "
          "| weighted error, aqrecipe / llama.cpp |")
    print("|---|---:|---:|---:|---:|")
    for type_name in args.types:
        codecs.quantize(w[:8], type_name, importance)  # warm tables and the thread pool
        ours = w.size / best_seconds(lambda: codecs.quantize(w, type_name, importance), args.reps) / 1e6
        if lib is None:
            print(f"| {type_name} | {ours:.1f} | | |")
            continue
        from gguf import GGMLQuantizationType

        if importance is None and type_name in ("IQ2_XXS", "IQ2_XS", "IQ1_S"):
            print(f"| {type_name} | {ours:.1f} | (needs an imatrix) | |")
            continue
        lib.ggml_quantize_init(int(GGMLQuantizationType[type_name]))
        theirs = w.size / best_seconds(lambda: ggml_quantize(lib, w, type_name, importance, args.threads), args.reps) / 1e6
        errors = [_weighted_error(w, codecs.dequantize(q, type_name, w.shape), importance)
                  for q in (codecs.quantize(w, type_name, importance), ggml_quantize(lib, w, type_name, importance, 1))]
        print(f"| {type_name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x | {errors[0] / errors[1]:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
