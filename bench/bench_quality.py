"""Quality and speed against llama.cpp's own quantizer, on the demo model.

For each file type: our file (aqrecipe quantize) and llama.cpp's
(llama_model_quantize on the same F16 GGUF), both evaluated in llama.cpp
against the F16 file on the built-in evaluation split: size, PPL, KLD, top-1,
and the time each quantizer took (ratio).

Usage: python bench/bench_quality.py [--chunks 8] [--context 512] [TYPE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llamacpp_tools import llama_quantize  # noqa: E402

from aqrecipe.cli.commands import main as aq  # noqa: E402
from aqrecipe.evaluate import CachedBackend, LlamaCppBackend, evaluate  # noqa: E402
from aqrecipe.evaluate.reference import reference_gguf  # noqa: E402

DEFAULT_TYPES = ["Q8_0", "Q4_0", "Q4_K_M"]


def _row(label: str, path: Path, seconds: float, ref: CachedBackend, chunks: int, context: int) -> str:
    r = evaluate(path, reference=ref, chunks=chunks, context=context, n_threads=2)
    size = path.stat().st_size / 2**20
    return (f"| {label} | {size:.2f} MiB | {r.perplexity_quantized:.4f} | {r.kld_mean:.5f} | "
            f"{100 * r.top1_agreement:.2f}% | {seconds:.2f} s |"), r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("types", nargs="*", default=DEFAULT_TYPES)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "2")
    f16 = reference_gguf("demo")
    ref = CachedBackend(LlamaCppBackend(f16, n_ctx=args.context, n_threads=2))
    print(f"reference: {f16} ({f16.stat().st_size / 2**20:.2f} MiB); eval {args.chunks} x {args.context} tokens")
    print("| file | size | PPL | KLD mean | top-1 | quantize time |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.types:
            ours, theirs = Path(tmp) / f"aq-{t}.gguf", Path(tmp) / f"llama-{t}.gguf"
            t0 = time.perf_counter()
            assert aq(["quantize", "demo", "--type", t, "-o", str(ours), "-q"]) == 0
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            llama_quantize(f16, theirs, t, nthread=2)
            t_theirs = time.perf_counter() - t0
            row_ours, r_ours = _row(f"aqrecipe {t}", ours, t_ours, ref, args.chunks, args.context)
            row_theirs, r_theirs = _row(f"llama.cpp {t}", theirs, t_theirs, ref, args.chunks, args.context)
            print(row_ours)
            print(row_theirs, flush=True)
        print(f"| F16 reference | {f16.stat().st_size / 2**20:.2f} MiB | {r_ours.perplexity_original:.4f} | 0 | 100% | |")


if __name__ == "__main__":
    main()
