"""Peak RSS of layer-by-layer calibration on a synthetic ~2 GB, 24-layer model.

Target (issue 4): peak RSS < 3 x the largest decoder layer + 1.5 GB. The model
is random (F32 safetensors, hidden 1024, ffn 4608, 24 layers, vocab 32000) with
the tiny test tokenizer; calibration runs 128 samples x 64 tokens in a child
process whose peak RSS (ru_maxrss) is reported.

Usage: python bench/bench_calibration_memory.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys
from aqrecipe.calibration.data import CalibrationSpec
from aqrecipe.imatrix import compute_imatrix
spec = CalibrationSpec(source="text", path=sys.argv[2], samples=128, seq_len=64)
data = compute_imatrix(sys.argv[1], spec, quiet=True)
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tensors": len(data)}))
"""


def build(folder: Path) -> int:
    """Write the synthetic model; returns the bytes of its largest decoder layer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_models import build_tokenizer

    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4608, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="500MB")
    build_tokenizer(folder, "smollm", vocab_size=300)
    return sum(p.numel() * 4 for p in model.model.layers[0].parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "synthetic-2gb"
        layer_bytes = build(folder) if not (folder / "config.json").exists() else None
        total = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        text = Path(tmp) / "calib.txt"
        text.write_text(("The quick brown fox jumps over the lazy dog. " * 20 + "\n\n") * 400)
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(text)], capture_output=True, text=True,
                             check=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]
        if layer_bytes is None:
            layer_bytes = 4 * (4 * 1024 * 1024 // 2 + 3 * 1024 * 4608)  # approx when reusing a kept folder
        limit = 3 * layer_bytes + 1.5 * 2**30
        print(f"| calibration peak RSS, synthetic {total / 2**30:.2f} GB / 24 layers (largest layer "
              f"{layer_bytes / 2**20:.0f} MiB) | {peak / 2**30:.2f} GiB | limit 3 x layer + 1.5 GiB = "
              f"{limit / 2**30:.2f} GiB: {'met' if peak < limit else 'MISSED'} |")


if __name__ == "__main__":
    main()
