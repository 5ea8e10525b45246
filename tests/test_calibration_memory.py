"""Resident memory of the calibration pass: a spilled activation cache stays out of RSS.

Each case runs in a fresh child process that warms up (libraries, kernels) with a
small run, hands free heap back, resets its high-water mark and then calibrates
2048 windows of 128 tokens on the tiny llama: a 64 MiB activation cache. Only
growth above the warmed-up process counts; a batch of 1024 tokens keeps the
pass's own transient small (measured: +69 MiB in memory, +7 spilled; memory-mapped
spill files, the earlier design, gave +135), so the bounds hold far from the edges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SAMPLES, SEQ_LEN, HIDDEN = 2048, 128, 64
CACHE_BYTES = SAMPLES * SEQ_LEN * HIDDEN * 4  # 64 MiB

_CHILD = r"""
import json, sys
import numpy as np
from aqrecipe.calibration.heap import trim_heap
from aqrecipe.calibration.runner import RunnerOptions, run_calibration
from aqrecipe.models import open_model

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(key + ":"))

source, limit, samples, seq_len = open_model(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
options = RunnerOptions(device="cpu", batch_tokens=1024, max_cache_bytes=limit)
rng = np.random.default_rng(0)
run_calibration(source, rng.integers(3, 300, size=(64, seq_len)), options=options, quiet=True)  # warm-up
windows = rng.integers(3, 300, size=(samples, seq_len))
trim_heap()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset VmHWM
base = status("VmRSS")
result = run_calibration(source, windows, options=options, quiet=True)
assert result.n_samples == samples
print(json.dumps({"base": base, "peak": status("VmHWM")}))
"""


def _growth(model_dir: Path, max_cache_bytes: int) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(model_dir), str(max_cache_bytes), str(SAMPLES),
                           str(SEQ_LEN)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return got["peak"] - got["base"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_spilled_cache_does_not_count_in_rss(tiny_llama_dir: Path) -> None:
    in_memory = _growth(tiny_llama_dir, 2 << 30)
    spilled = _growth(tiny_llama_dir, 0)
    print(f"RSS growth: in-memory cache {in_memory / 2**20:.0f} MiB, spilled {spilled / 2**20:.0f} MiB")
    assert in_memory >= CACHE_BYTES * 3 // 4  # the measurement sees a resident cache ...
    assert spilled < CACHE_BYTES // 2  # ... and a spilled one is not (memory-mapped files were)
