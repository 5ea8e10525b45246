"""Compile time on a synthetic 70B-shaped header (target: under 1 s).

The first compile of a folder runs llama.cpp's converter on meta tensors (importing torch);
it stores the tensor table in ~/.cache/aqrecipe/converted/, and every later compile of the
same folder reads headers only. Both are reported (the cold one with its own cache folder).

Usage: python bench/bench_compile.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import write_sparse_gguf, write_sparse_model  # noqa: E402

from aqrecipe.models import open_model  # noqa: E402
from aqrecipe.plan import PlanSpec, compile_plan, render_plan  # noqa: E402


def compile_times(model_path: Path, mixture: str, runs: int = 5):
    """``runs`` timed compiles (open, compile, render) of ``model_path``: (the last plan, the seconds)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        plan = compile_plan(open_model(model_path), PlanSpec(mixture=mixture), model_ref=str(model_path))
        render_plan(plan)
        times.append(time.perf_counter() - t0)
    return plan, times


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    import os

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AQRECIPE_CONVERTED_DIR"] = str(Path(tmp) / "tables")  # a cold conversion-table cache
        folder = write_sparse_model(Path(tmp) / "llama-70b")
        plan, runs = compile_times(folder, "Q4_K_M")
        cold, runs = runs[0], runs[1:]
        print(f"| first compile of the 70B-shaped folder (llama.cpp's converter on meta tensors, torch import "
              f"included) | {cold:.2f} s |")
        print(f"| compile 70B-shaped header (Q4_K_M, {len(plan.entries)} tensors, {plan.n_params / 1e9:.1f}B params) "
              f"| median {median(runs):.3f} s, best {min(runs):.3f} s | target < 1 s: "
              f"{'met' if median(runs) < 1 else 'MISSED'} |")
        gguf_path = write_sparse_gguf(Path(tmp) / "llama-70b-f16.gguf")
        plan, runs = compile_times(gguf_path, "Q4_K_M")
        print(f"| compile a 70B-shaped F16 GGUF header (128,256 tokens, 280,147 merges, {len(plan.entries)} tensors) "
              f"| median {median(runs):.3f} s, best {min(runs):.3f} s | target < 1 s: "
              f"{'met' if median(runs) < 1 else 'MISSED'} |")


if __name__ == "__main__":
    main()
