"""Run every benchmark of BENCHMARKS.md in sequence; output goes to out/bench/NAME.txt.

The demo imatrix the low-bit benchmarks need is computed first (64 x 256 tokens,
as in BENCHMARKS.md) and reused. Each benchmark runs in its own process so one
failure does not stop the rest; the exit code is non-zero if any failed.

Usage: python bench/run_all.py [--only NAME ...] [--out out/bench]
Takes well over an hour on a 2-core machine; pick benchmarks with --only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def benchmarks(imatrix: Path, out: Path) -> dict[str, list[str]]:
    """Name -> command line (arguments after the script) of each benchmark."""
    return {
        "compile": ["bench_compile.py"],
        "pack": ["bench_pack.py"],
        "quality": ["bench_quality.py"],
        "lowbit": ["bench_lowbit.py", "--imatrix", str(imatrix)],
        "imatrix_effect": ["bench_imatrix_effect.py", "--imatrix", str(imatrix)],
        "stats_kernel": ["bench_stats_kernel.py"],
        "calibration_speed": ["bench_calibration_speed.py", "--plain-too"],
        "calibration_memory": ["bench_calibration_memory.py"],
        "planner": ["bench_planner.py", "--demo", str(out / "planner"), "--imatrix", str(imatrix)],
        "sensitivity": ["bench_sensitivity.py", "--json", str(out / "sensitivity.json")],
        "super_weights": ["bench_super_weights.py"],
        "smoothquant": ["bench_smoothquant.py"],
    }


def ensure_imatrix(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    cli = Path(sys.executable).parent / "aqrecipe"
    subprocess.run([str(cli), "imatrix", "compute", "demo", "--samples", "128",
                    "--seq-len", "256", "-o", str(path), "--quiet"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="benchmark names (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench")
    args = ap.parse_args()
    imatrix = args.out / "demo-imatrix.gguf"
    table = benchmarks(imatrix, args.out)
    unknown = set(args.only or ()) - set(table)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(table)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name, argv in table.items():
        if args.only and name not in args.only:
            continue
        if "--imatrix" in argv:
            ensure_imatrix(imatrix)
        t0 = time.perf_counter()
        with open(args.out / f"{name}.txt", "w") as log:
            rc = subprocess.run([sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:]],
                                stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"{name:20s} {'ok' if rc == 0 else f'FAILED ({rc})':12s} {time.perf_counter() - t0:8.1f} s"
              f"  -> {args.out / (name + '.txt')}")
        if rc:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
