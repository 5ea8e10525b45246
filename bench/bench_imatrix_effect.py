"""IQ1_S on the demo with and without the imatrix: file size, PPL, KLD, top-1 in llama.cpp.

Usage: python bench/bench_imatrix_effect.py --imatrix demo-imatrix.gguf [--chunks 4] [--type IQ1_S]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from aqrecipe.cli.commands import main as aq
from aqrecipe.evaluate import CachedBackend, LlamaCppBackend, evaluate
from aqrecipe.evaluate.reference import reference_gguf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--imatrix", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--type", default="IQ1_S")
    args = ap.parse_args()
    ref = CachedBackend(LlamaCppBackend(reference_gguf("demo"), n_ctx=512, n_threads=2))
    print(f"| {args.type} file | size | PPL | KLD mean | top-1 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("with imatrix", ["--imatrix", str(args.imatrix)]), ("without imatrix", None)):
            out = Path(tmp) / f"{label.replace(' ', '-')}.gguf"
            if extra is None:  # the recipe override that allows IQ types without an imatrix
                recipe = Path(tmp) / "no-imatrix.yaml"
                recipe.write_text(f"version: 1\nmodel: demo\nquantization:\n  mixture: {args.type}\n"
                                  "  allow_without_imatrix: true\nevaluation: {enabled: false}\n"
                                  "coherence: {enabled: false}\n")
                assert aq(["apply", str(recipe), "-o", str(out), "-q"]) == 0
            else:
                assert aq(["quantize", "demo", "--type", args.type, "-o", str(out), "-q", *extra]) == 0
            r = evaluate(out, reference=ref, chunks=args.chunks, context=512, n_threads=2)
            print(f"| {label} | {out.stat().st_size / 2**20:.2f} MiB | {r.perplexity_quantized:.3f} | "
                  f"{r.kld_mean:.4f} | {100 * r.top1_agreement:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
