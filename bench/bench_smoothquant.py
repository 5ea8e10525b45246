"""SmoothQuant on the demo model: quality table and llama.cpp prefill speed of the smoothed Q8_0 GGUF.

Usage:
  python bench/bench_smoothquant.py             # Q8_0 (smoothed, alpha 0.5) vs F16 GGUF: prefill tok/s + PPL
  python bench/bench_smoothquant.py --quality   # PPL / KLD: float, W8A8 plain, alpha 0.5, 0.8, auto

Small settings (shared 2-core machine): calibration 64 samples x 256 tokens (built-in
Wikipedia split), evaluation 4 chunks x 512 tokens (built-in eval split).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from aqrecipe.calibration import CalibrationSpec
from aqrecipe.evaluate import evaluate
from aqrecipe.apply.smoothquant import run_smoothquant

CALIB = CalibrationSpec(samples=64, seq_len=256, enforce_sample_range=False)
CHUNKS, CONTEXT = 4, 512


def prefill_tokens_per_s(path: Path, tokens: list[int], reps: int) -> float:
    """Median prefill speed of llama.cpp (n_threads=2) on ``tokens``."""
    from aqrecipe.evaluate.llamacpp_worker import open_llama

    llm = open_llama(str(path), n_ctx=len(tokens) + 16, n_threads=2, n_batch=len(tokens), verbose=False, seed=0)
    try:
        llm.eval(tokens[:8])  # warm-up
        runs = []
        for _ in range(reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(tokens)
            runs.append(time.perf_counter() - t0)
        return len(tokens) / statistics.median(runs)
    finally:
        llm.close()


def speed(work: Path, reps: int) -> None:
    from aqrecipe.formats import corpus
    from aqrecipe.evaluate.reference import reference_gguf

    q8 = work / "demo-smoothquant-Q8_0.gguf"
    run_smoothquant({"alpha": 0.5, "output": {"type": "gguf-q8_0"}}, "demo", CALIB, work / "sq", q8,
                    evaluate=False)
    f16 = reference_gguf("demo")
    import llama_cpp

    vocab_model = llama_cpp.Llama(model_path=str(f16), n_ctx=64, vocab_only=True, verbose=False)
    text = corpus.join_articles(corpus.evaluation_articles())
    tokens = vocab_model.tokenize(text.encode(), add_bos=True)[:512]
    vocab_model.close()
    rows = {}
    for label, path in (("F16", f16), ("Q8_0 smoothed", q8)):
        tps = prefill_tokens_per_s(path, tokens, reps)
        ppl = evaluate(path, chunks=CHUNKS, context=CONTEXT).perplexity_quantized
        rows[label] = (tps, ppl, path.stat().st_size)
        print(f"| {label} | prefill {tps:,.0f} tok/s (512-token prompt, n_threads=2, median of {reps}) "
              f"| PPL {ppl:.4f} ({CHUNKS}x{CONTEXT}) | {rows[label][2] / 2**20:.1f} MiB |")
    ratio = rows["Q8_0 smoothed"][0] / rows["F16"][0]
    print(f"| prefill speed ratio Q8_0-smoothed / F16 | {ratio:.2f}x | PPL ratio "
          f"{rows['Q8_0 smoothed'][1] / rows['F16'][1]:.4f} |")


def quality(work: Path) -> None:
    runs = [("W8A8 no smoothing", {"enabled": False}), ("W8A8 alpha 0.5", {"alpha": 0.5}),
            ("W8A8 alpha 0.8", {"alpha": 0.8}), ("W8A8 alpha auto", {"alpha": "auto"})]
    for acts in ("dynamic-per-token",):
        for label, section in runs:
            section = {**section, "activations": {"type": acts}, "output": {"type": "none"}}
            r = run_smoothquant(section, "demo", CALIB, work / "sq", evaluate=True, eval_chunks=CHUNKS,
                                eval_context=CONTEXT)
            q = r.quality
            if label == runs[0][0]:
                print(f"| float32 | PPL {q['perplexity_original']:.4f} | KLD 0 |")
            search = "; ".join(f"{s['alpha']:.1f}:{s['calibration_nll']:.4f}" for s in r.alpha_search)
            print(f"| {label} ({acts}) | PPL {q['perplexity_quantized']:.4f} | KLD {q['kld_mean']:.5f} "
                  f"| top-1 {q['top1_agreement']:.4f} | max rel logit diff {r.equivalence_max_rel_logit_diff:.2e} "
                  f"| alpha {r.alpha} {('(' + search + ')') if search else ''} | problems {len(r.problems)} |",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", action="store_true", help="print the PPL / KLD table instead")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aqrecipe-sq-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        quality(work) if args.quality else speed(work, args.reps)


if __name__ == "__main__":
    main()
