"""Ultra-low-bit types on the demo model: weighted error, speed, and quality in llama.cpp.

1. Weighted RMSE (imatrix-weighted, relative) of every ffn_down tensor per type,
   packed with and without the imatrix.
2. Throughput per type (million weights/s, RAYON_NUM_THREADS=2) and the time to
   pack all ffn_down tensors to IQ1_S.
3. Each llama.cpp-style file type written with the imatrix, evaluated in llama.cpp
   against the F16 file (PPL, KLD, top-1) with the coherence verdict.

Usage: python bench/bench_lowbit.py --imatrix demo-imatrix.gguf [--chunks 4] [--skip-eval]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAYON_NUM_THREADS", "2")

from aqrecipe.quant import codecs  # noqa: E402
from aqrecipe.imatrix import load_imatrix  # noqa: E402
from aqrecipe.models import open_model  # noqa: E402

TYPES = ["Q4_K", "Q3_K", "Q2_K", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0"]
FILE_TYPES = ["Q3_K_M", "Q2_K", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0"]


def weighted_rel_rmse(w: np.ndarray, w_hat: np.ndarray, imp: np.ndarray) -> float:
    """sqrt(sum_c imp_c * sum_r err^2 / sum_c imp_c * sum_r w^2)."""
    err = ((w - w_hat) ** 2).sum(axis=0)
    return float(np.sqrt((imp * err).sum() / (imp * (w**2).sum(axis=0)).sum()))


def error_table(imatrix_path: Path) -> None:
    source, imx = open_model("demo"), load_imatrix(imatrix_path)
    downs = [(t.gguf_name, source.read(t.hf_name)) for t in source.tensors if t.gguf_name.endswith("ffn_down.weight")]
    n_weights = sum(w.size for _, w in downs)
    print(f"\n## Weighted relative RMSE on the {len(downs)} ffn_down tensors ({n_weights:,} weights)\n")
    print("| type | bpw | without imatrix | with imatrix | change | Mweights/s (no imatrix) | Mweights/s (imatrix) |")
    print("|---|---|---|---|---|---|---|")
    for t in TYPES:
        errs, secs = {False: [], True: []}, {False: 0.0, True: 0.0}
        for name, w in downs:
            imp = imx.importance(name)
            for use in (False, True):
                t0 = time.perf_counter()
                packed = codecs.quantize(w, t, imp if use else None)
                secs[use] += time.perf_counter() - t0
                errs[use].append(weighted_rel_rmse(w, codecs.dequantize(packed, t, w.shape), imp))
        a, b = float(np.mean(errs[False])), float(np.mean(errs[True]))
        bpw = 8 * packed.nbytes / w.size
        print(f"| {t} | {bpw:.4g} | {a:.4f} | {b:.4f} | {100 * (b - a) / a:+.1f}% | "
              f"{n_weights / secs[False] / 1e6:.2f} | {n_weights / secs[True] / 1e6:.2f} |", flush=True)
        if t == "IQ1_S":
            print(f"\n(IQ1_S: all {len(downs)} ffn_down tensors packed in {secs[True]:.1f} s with the imatrix)\n")


def quality_table(imatrix_path: Path, chunks: int) -> None:
    from aqrecipe.cli.commands import main as aq
    from aqrecipe.evaluate.coherence import CoherenceSpec, check_coherence
    from aqrecipe.evaluate.reference import reference_gguf

    ref = reference_gguf("demo")
    print(f"\n## File types with the imatrix, in llama.cpp ({chunks} x 512 tokens of the eval split)\n")
    print("| file type | size | bpw | PPL | PPL ratio | KLD mean | top-1 | coherence |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for ft in FILE_TYPES:
            out = Path(tmp) / f"{ft}.gguf"
            assert aq(["quantize", "demo", "--type", ft, "--imatrix", str(imatrix_path), "-o", str(out), "-q", "--no-eval"]) == 0
            v = check_coherence(out, ref, CoherenceSpec(chunks=chunks))
            q, size = v.quality, out.stat().st_size
            print(f"| {ft} | {size / 2**20:.2f} MiB | {8 * size / 134_515_008:.3f} | {q['perplexity_quantized']:.3f} | "
                  f"{v.ppl_ratio:.3f} | {q['kld_mean']:.4f} | {100 * q['top1_agreement']:.1f}% | "
                  f"{'pass' if v.passed else 'COLLAPSED: ' + '; '.join(v.failures)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--imatrix", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()
    error_table(args.imatrix)
    if not args.skip_eval:
        quality_table(args.imatrix, args.chunks)


if __name__ == "__main__":
    main()
