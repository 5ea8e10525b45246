"""Peak memory of packing an HF folder through llama.cpp's converter: one tensor at a time, no F16 copy.

Writes a random 2.4 GB (F32) llama-shaped folder with the demo's tokenizer, then runs
``aqrecipe quantize FOLDER --type Q8_0`` in a child process and reports its peak RSS against the
size of the weights, of the largest tensor and of the imports alone.

Usage: python bench/bench_pack_memory.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import llama_tensor_shapes, write_random_model  # noqa: E402

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 8, "num_attention_heads": 32, "num_key_value_heads": 4,
    "vocab_size": 49152, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}


def _peak_rss_mib(argv: list[str]) -> tuple[float, float, str]:
    """Run ``argv`` under /usr/bin/time -v: (peak RSS MiB, seconds, stderr tail)."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rss = next(int(line.split()[-1]) for line in done.stderr.splitlines() if "Maximum resident" in line)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return rss / 1024, seconds, done.stderr[-300:]


def main() -> None:
    from aqrecipe.models.demo import materialize_demo

    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        folder = write_random_model(Path(tmp) / "llama-2g", CONFIG)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(materialize_demo() / name, folder / name)
        shapes = llama_tensor_shapes(CONFIG).values()
        sizes = [4 * int(__import__("math").prod(s)) for s in shapes]
        total, largest = sum(sizes) / 2**20, max(sizes) / 2**20
        out = Path(tmp) / "out.gguf"
        rss, seconds, _ = _peak_rss_mib([sys.executable, "-m", "aqrecipe.cli", "quantize", str(folder),
                                         "--type", "Q8_0", "-o", str(out), "--no-eval", "-q"])
        baseline, _, _ = _peak_rss_mib([sys.executable, "-c", "import torch, transformers, aqrecipe.cli"])
        print(f"| pack a {total:.0f} MiB F32 folder to Q8_0 ({out.stat().st_size / 2**20:.0f} MiB) through "
              f"llama.cpp's converter | peak RSS {rss:.0f} MiB = {rss - baseline:.0f} MiB above the "
              f"{baseline:.0f} MiB of the imports; largest tensor {largest:.0f} MiB F32 | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
