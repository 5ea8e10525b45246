"""Wall time, tokens/s, statistics overhead and peak RSS of the demo model's imatrix.

The issue-4 measurement: `compute_imatrix` of the demo model (SmolLM2-135M,
F32) on the built-in Wikipedia calibration split, 512 samples x 512 tokens by
default, layer by layer with checkpoints in a temporary work folder.

The statistics overhead is measured inside the same run: the hooks time the
observers (tensor -> numpy, the numba kernel, the alias bookkeeping) and the
overhead is that time over the rest of the pass, so background load on a
shared machine cancels out of the ratio. With --plain-too the same windows
also run as a plain forward pass (no hooks, no statistics; checkpoints and
cache as before) once before and once after the statistics run (after an
untimed warm-up), and the statistics pass is compared with the mean of the two:
a cross-check that includes everything the hooks cost. Peak RSS is ru_maxrss of
this process when the statistics run ends.

Usage: python bench/bench_calibration_speed.py [--samples 512] [--seq-len 512] [--plain-too]
       [--out imatrix.gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--out", help="also write the imatrix here (.gguf or .dat)")
    ap.add_argument("--plain-too", action="store_true",
                    help="also time a plain forward pass (no statistics) over the same windows")
    args = ap.parse_args()

    from aqrecipe.calibration.data import CalibrationSpec, calibration_windows, load_tokenizer
    from aqrecipe.calibration.runner import RunnerOptions
    from aqrecipe.imatrix.compute import calibrate, imatrix_from_result
    from aqrecipe.imatrix.io import save_imatrix
    from aqrecipe.models import open_model

    source = open_model("demo")
    spec = CalibrationSpec(samples=args.samples, seq_len=args.seq_len,
                           enforce_sample_range=args.samples >= 128)
    t0 = time.perf_counter()
    calibration_windows(spec, load_tokenizer(str(source.tokenizer_dir)))
    tokenize_s = time.perf_counter() - t0
    load0 = os.getloadavg()[0]

    def timed_pass(collect: bool):
        with tempfile.TemporaryDirectory(prefix="aqrecipe-bench-cal-") as work:
            t0 = time.perf_counter()
            res = calibrate(source, spec, work, quiet=True, options=RunnerOptions(collect=collect))
            return res, time.perf_counter() - t0

    plain = {}
    if args.plain_too:  # warm up torch untimed, then plain / statistics / plain
        calibrate(source, CalibrationSpec(samples=8, seq_len=args.seq_len, enforce_sample_range=False),
                  quiet=True, options=RunnerOptions(collect=False))
        before, _ = timed_pass(False)
    result, wall = timed_pass(True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.plain_too:
        after, _ = timed_pass(False)
        mean = (before.seconds + after.seconds) / 2
        plain = {"plain_pass_s": [round(before.seconds, 1), round(after.seconds, 1)],
                 "ab_overhead_pct": round(100 * (result.seconds - mean) / mean, 2)}
    if args.out:
        save_imatrix(imatrix_from_result(result, spec), args.out)
    print(json.dumps({
        "samples": args.samples, "seq_len": args.seq_len, "tokens": result.n_tokens,
        "wall_s": round(wall, 1), "tokenize_s": round(tokenize_s, 1),
        "pass_s": round(result.seconds, 1), "stats_s": round(result.stats_seconds, 1),
        "stats_overhead_pct": round(100 * result.stats_overhead, 2),
        "tokens_per_s": round(result.n_tokens / wall, 1),
        **plain,
        "peak_rss_gib": round(rss, 2),
        "loadavg_start": round(load0, 2), "loadavg_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
