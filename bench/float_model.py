"""The benchmarks' float model: the demo with noise of its source's rounding scale added.

The demo folder is an exact dequantization of a Q4_1 GGUF (token_embd Q8_0), so Q4_1, Q5_1 and
Q8_0 store it losslessly and flatter any planner that may pick them. Quality claims against
llama.cpp are made on this model instead: every weight of every 2-D tensor gets uniform noise of
plus or minus half a quantization step of the block it came from (Q4_1: (max - min) / 15 over its
32 weights; Q8_0, the embedding: max |x| / 127), so the weights keep the demo's distribution and
behaviour while no block type reproduces them. Norms (1-D) are left as they are. The noise is
seeded per tensor name: the same bytes on every machine.

    python bench/float_model.py            # prints the folder (materialised once, cached)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aqrecipe.models.demo import cache_root, materialize_demo  # noqa: E402

VERSION = 1  # bump when the recipe below changes: the cache folder is keyed by it
EMBEDDING = "model.embed_tokens.weight"  # the Q8_0 tensor of the source GGUF
BLOCK = 32  # Q4_1 and Q8_0 block length


def half_steps(w: np.ndarray, *, q8: bool) -> np.ndarray:
    """Half the quantization step of each weight's source block, broadcast to ``w``'s shape."""
    blocks = w.reshape(-1, w.shape[-1] // BLOCK, BLOCK)
    if q8:
        step = np.abs(blocks).max(axis=-1, keepdims=True) / 127.0
    else:
        step = (blocks.max(axis=-1, keepdims=True) - blocks.min(axis=-1, keepdims=True)) / 15.0
    return np.broadcast_to(step / 2.0, blocks.shape).reshape(w.shape)


def add_rounding_noise(name: str, w: np.ndarray) -> np.ndarray:
    """``w`` plus uniform noise within half a source quantization step, seeded by ``name``."""
    if w.ndim != 2 or w.shape[-1] % BLOCK:
        return w
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    h = half_steps(w.astype(np.float64), q8=name == EMBEDDING)
    noisy = w.astype(np.float64) + rng.uniform(-1.0, 1.0, size=w.shape) * h
    return noisy.astype(np.float32)


def float_demo(cache_dir: Path | None = None) -> Path:
    """The float model's HF folder (built from the demo on first use, then cached)."""
    final = cache_root(cache_dir) / "bench" / f"float-demo-v{VERSION}"
    if (final / "config.json").is_file():
        return final
    from safetensors.numpy import load_file, save_file

    demo = materialize_demo(cache_dir)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(demo, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
    try:
        for src in sorted(demo.glob("*.safetensors")):
            tensors = load_file(src)
            save_file({k: add_rounding_noise(k, v) for k, v in sorted(tensors.items())}, tmp / src.name,
                      metadata={"format": "pt"})
        (tmp / "float-demo.json").write_text(json.dumps(
            {"source": str(demo), "version": VERSION, "noise": "uniform, +-half a source block step"}, indent=1) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first; its folder is identical
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


if __name__ == "__main__":
    print(float_demo())
