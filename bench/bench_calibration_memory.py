"""Peak RSS of layer-by-layer calibration on a synthetic 2.17 GiB, 24-layer model, with a breakdown.

Target (issue 4): peak RSS < 3 x the largest decoder layer + 1.5 GiB. The model is
random (F32 safetensors written tensor by tensor: hidden 1152, ffn 5120, 24 layers,
18/6 heads, vocab 32000; 81 MiB per decoder layer) with the tiny test tokenizer;
calibration runs 128 samples x 64 tokens in a child process, which reads its own
/proc/self/status (VmRSS, VmHWM, RssAnon, RssFile) after every step and resets the
high-water mark (``/proc/self/clear_refs``) so each row's "peak" is that step's own.

Usage: python bench/bench_calibration_memory.py [--keep DIR] [--all-layers] [--json OUT]
Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import write_random_model  # noqa: E402

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1152,
    "intermediate_size": 5120, "num_hidden_layers": 24, "num_attention_heads": 18,
    "num_key_value_heads": 6, "vocab_size": 32000, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
SAMPLES, SEQ_LEN = 128, 64
GIB, MIB = 2**30, 2**20

CHILD = r"""
import json, sys
rows = []
def mark(name):
    s = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                s[k] = int(v.split()[0]) * 1024
    rows.append({"step": name, "rss": s["VmRSS"], "peak": s["VmHWM"], "anon": s["RssAnon"], "file": s["RssFile"]})
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM: the next row's peak is its own step's
    except OSError:
        pass
mark("python start")
import numpy
mark("import numpy")
import torch
mark("import torch")
import transformers
mark("import transformers")
from aqrecipe.calibration import runner
from aqrecipe.calibration.data import CalibrationSpec, calibration_windows, load_tokenizer
from aqrecipe.models import open_model
mark("import aqrecipe calibration")
source = open_model(sys.argv[1])
mark("open model (headers)")
tok = load_tokenizer(str(source.tokenizer_dir))
mark("load tokenizer")
spec = CalibrationSpec(source="text", path=sys.argv[2], samples=int(sys.argv[3]), seq_len=int(sys.argv[4]))
windows = calibration_windows(spec, tok)
mark("tokenize + windows")
build = runner.build_skeleton
def skeleton(*args):
    out = build(*args)
    mark("skeleton on meta (+ modeling imports)")
    return out
runner.build_skeleton = skeleton
n_layers = source.arch.n_layers
stage = [-1]
trim = getattr(runner, "trim_heap", None)
def after_stage():
    if trim is not None:
        trim()
    i = stage[0]
    mark("embeddings" if i < 0 else f"layer {i}" if i < n_layers else "output norm")
    stage[0] += 1
if trim is not None:
    runner.trim_heap = after_stage
runner.run_calibration(source, windows, quiet=True)
mark("done")
print(json.dumps(rows))
"""


def layer_bytes(folder: Path) -> int:
    """The largest decoder layer's weights in float32 (what calibration holds per layer)."""
    from aqrecipe.models import open_model

    per_layer: dict[str, int] = {}
    for t in open_model(folder).tensors:
        if t.gguf_name.startswith("blk."):
            n = 4
            for d in t.shape:
                n *= int(d)
            key = t.gguf_name.split(".")[1]
            per_layer[key] = per_layer.get(key, 0) + n
    return max(per_layer.values())


def build(folder: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_models import build_tokenizer

    write_random_model(folder, CONFIG)
    build_tokenizer(folder, "smollm", vocab_size=300)


def table(rows: list[dict], all_layers: bool) -> list[str]:
    out = [f"{'step':40s} {'RSS after':>10s} {'step peak':>10s} {'anon':>8s} {'file':>8s}  (MiB)"]
    layers = [r for r in rows if r["step"].startswith("layer ")]
    for r in rows:
        if r["step"].startswith("layer ") and not all_layers and r is not layers[0]:
            if r is layers[-1]:  # the other layers in one line: ranges
                rest = layers[1:]
                def span(key: str) -> str:
                    lo, hi = min(x[key] for x in rest) / MIB, max(x[key] for x in rest) / MIB
                    return f"{lo:.0f}-{hi:.0f}"
                out.append(f"{f'layers 1-{len(layers) - 1} (range)':40s} {span('rss'):>10s} {span('peak'):>10s} "
                           f"{span('anon'):>8s} {span('file'):>8s}")
            continue
        out.append(f"{r['step']:40s} {r['rss'] / MIB:10.0f} {r['peak'] / MIB:10.0f} {r['anon'] / MIB:8.0f} "
                   f"{r['file'] / MIB:8.0f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, help="model folder to build once and reuse")
    ap.add_argument("--all-layers", action="store_true", help="one breakdown row per layer")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "synthetic-2gb"
        if not (folder / "tokenizer.json").exists():
            build(folder)
        total = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        layer = layer_bytes(folder)
        text = Path(tmp) / "calib.txt"
        text.write_text(("The quick brown fox jumps over the lazy dog. " * 20 + "\n\n") * 400)
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(text), str(SAMPLES), str(SEQ_LEN)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"calibration child failed:\n{out.stderr[-4000:]}")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
    peak_row = max(rows, key=lambda r: r["peak"])
    peak = peak_row["peak"]
    limit = 3 * layer + 1.5 * GIB
    n_layers = CONFIG["num_hidden_layers"]
    print(f"synthetic llama: {total / GIB:.2f} GiB F32 ({total / 1e9:.2f} GB), {n_layers} layers, largest decoder "
          f"layer {layer / MIB:.1f} MiB; calibration {SAMPLES} x {SEQ_LEN} tokens")
    print("\n".join(table(rows, args.all_layers)))
    print(f"peak RSS {peak / GIB:.2f} GiB ({peak / MIB:.0f} MiB) during '{peak_row['step']}'; "
          f"limit 3 x {layer / MIB:.1f} MiB + 1.5 GiB = {limit / GIB:.2f} GiB ({limit / MIB:.0f} MiB)")
    verdict = "PASS" if peak < limit else "FAIL"
    print(f"{verdict}: peak RSS {peak / MIB:.0f} MiB {'<' if peak < limit else '>='} limit {limit / MIB:.0f} MiB "
          f"(margin {(limit - peak) / MIB:+.0f} MiB)")
    print(f"| calibration peak RSS, synthetic {total / GIB:.2f} GiB / {n_layers} layers (largest layer "
          f"{layer / MIB:.0f} MiB) | {peak / GIB:.2f} GiB | limit 3 x layer + 1.5 GiB = "
          f"{limit / GIB:.2f} GiB: {'met' if peak < limit else 'MISSED'} |")
    if args.json:
        args.json.write_text(json.dumps({"model_bytes": total, "layer_bytes": layer, "limit_bytes": limit,
                                         "peak_bytes": peak, "pass": peak < limit, "rows": rows}, indent=1))
    if peak >= limit:
        sys.exit(1)  # run_all.py reports a missed target as a failed benchmark


if __name__ == "__main__":
    main()
