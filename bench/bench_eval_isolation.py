"""Evaluation speed of the llama.cpp remedies of issue 13, in one run on this machine.

The demo evaluation (8 windows x 512 tokens of the built-in held-out text, the
quantized file against the F16 reference) is timed for demo files of several
types under three set-ups:

- ``in-process``: llama_cpp.Llama in this process, llama.cpp's defaults (the
  pre-issue-13 path; on an AMX Xeon it segfaults on quantized files);
- ``worker, repack on``: aqrecipe's isolated worker with weight repacking;
- ``worker, repack off``: the worker with ``use_extra_bufts = False``, what
  aqrecipe chooses where llama.cpp uses AMX.

Prints tokens/s of the quantized model's windows (the reference's are timed
separately) and the ratios to the in-process baseline; each set-up is run in
``--rounds`` interleaved rounds and the best round kept, so that background load
on a shared machine affects all three alike. Usage:
``python bench/bench_eval_isolation.py [--chunks 8] [--types Q4_0 Q4_K_M Q8_0]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from aqrecipe.formats import corpus
from aqrecipe.cli.commands import main as cli
from aqrecipe.evaluate import eval_windows
from aqrecipe.evaluate.llamacpp import LlamaCppBackend
from aqrecipe.evaluate.llamacpp_worker import system_info

CONTEXT = 512


class InProcess:
    """The old path: the model in this process, llama.cpp defaults."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                              verbose=False, seed=1234)

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32, copy=True)

    def close(self) -> None:
        self.llm.close()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def time_windows(backend, windows: list[np.ndarray]) -> float:
    backend.logits(windows[0][:32])  # warm-up
    t0 = time.perf_counter()
    for w in windows:
        backend.logits(w)
    return len(windows) * CONTEXT / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--types", nargs="+", default=["Q4_0", "Q4_K_M", "Q8_0"])
    ap.add_argument("--work", type=Path, default=Path("out/bench/eval_isolation"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import llama_cpp

    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); llama.cpp: {system_info(llama_cpp).strip()}")
    files = {}
    for t in args.types:
        files[t] = args.work / f"demo-{t}.gguf"
        if not files[t].exists():
            assert cli(["quantize", "demo", "--type", t, "-o", str(files[t]), "--no-eval", "-q"]) == 0
    ref = LlamaCppBackend(files[args.types[0]], n_ctx=CONTEXT)
    text = corpus.join_articles(corpus.evaluation_articles())
    windows = list(eval_windows(ref.tokenize(text), args.chunks, CONTEXT, ref.bos_token_id))
    ref.close()
    print(f"{args.chunks} windows x {CONTEXT} tokens; tokens/s of the quantized model's forward passes")
    print(f"{'type':8} {'in-process':>11} {'worker repack on':>17} {'worker repack off':>18} {'on/in':>6} {'off/in':>7}")
    for t, path in files.items():
        speeds = [0.0, 0.0, 0.0]
        for _ in range(args.rounds):  # interleaved rounds, best of each: background load hits all alike
            for i, make in enumerate((lambda: InProcess(path, CONTEXT),
                                      lambda: _worker(path, "on"),
                                      lambda: _worker(path, "off"))):
                backend = make()
                try:
                    speeds[i] = max(speeds[i], time_windows(backend, windows))
                finally:
                    backend.close()
        base = speeds[0]
        print(f"{t:8} {speeds[0]:11.1f} {speeds[1]:17.1f} {speeds[2]:18.1f} {speeds[1] / base:6.3f} {speeds[2] / base:7.3f}")


def _worker(path: Path, repack: str) -> LlamaCppBackend:
    os.environ["AQRECIPE_LLAMACPP_REPACK"] = repack
    try:
        return LlamaCppBackend(path, n_ctx=CONTEXT)
    finally:
        del os.environ["AQRECIPE_LLAMACPP_REPACK"]


if __name__ == "__main__":
    main()
