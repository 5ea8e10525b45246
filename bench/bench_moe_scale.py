"""Mixture-of-experts at scale (issue 18, item 5): a DeepSeek-V3-shaped (671B) header and a 2 GB model.

1. ``compile`` of a DeepSeek-V3-shaped folder: DeepSeek-V3's published config, the checkpoint's own
   tensor names and shapes (transformers' model on the meta device, its weights named as the
   checkpoint stores them: one tensor per routed expert), BF16, sparse data. The first compile runs
   llama.cpp's converter on meta tensors and caches the table; later ones read headers (target < 2 s).
2. The planner on a measurement of that model's shape (synthetic errors, 10 types per tensor):
   solve time at 1.75 and 2.5 bits per weight (target < 5 s).
3. Peak RSS on a random MoE model of at least 2 GB (float32): ``quantize --type Q4_K_M`` packs one
   tensor at a time and ``imatrix compute`` holds one layer (all its experts) at a time.

Usage: python bench/bench_moe_scale.py [--skip-memory]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))

from bench_compile import compile_times, median  # noqa: E402
from synthetic import write_sparse_model  # noqa: E402

DEEPSEEK_V3 = {  # deepseek-ai/DeepSeek-V3 config.json (its multi-token-prediction layer and FP8 config dropped)
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
    "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True,
    "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False,
    "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280,
}
#: a Mixtral-shaped model of about 2.2 GB in float32 (8 experts of 1024 x 2816, 8 layers)
MOE_2GB = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 1024,
    "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
    "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 49152, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "rope_theta": 1e6, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}


def checkpoint_shapes(config: dict) -> dict[str, list[int]]:
    """The checkpoint's tensor names and shapes for ``config``: transformers' model on the meta device,
    its state dict under the names ``save_pretrained`` writes (one tensor per expert)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    cfg = dict(config)
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(hf_config)
    state = {k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()}
    return {k: list(v.shape) for k, v in revert_weight_conversion(model, state).items()}


def bench_compile(tmp: Path) -> list:
    os.environ["AQRECIPE_CONVERTED_DIR"] = str(tmp / "tables")  # a cold conversion-table cache
    t0 = time.perf_counter()
    folder = write_sparse_model(tmp / "deepseek-v3", DEEPSEEK_V3, n_shards=163, shapes=checkpoint_shapes(DEEPSEEK_V3))
    print(f"wrote the DeepSeek-V3-shaped folder (163 shards) in {time.perf_counter() - t0:.1f} s")
    plan, runs = compile_times(folder, "IQ1_S")
    cold, warm = runs[0], runs[1:]
    experts = [e for e in plan.entries if "_exps" in e.gguf_name]
    print(f"| first compile (llama.cpp's converter on meta tensors, torch import included) | {cold:.2f} s |")
    print(f"| compile DeepSeek-V3-shaped header (IQ1_S mixture, {len(plan.entries)} GGUF tensors of which "
          f"{len(experts)} merged experts, {plan.n_params / 1e9:.1f}B params) | median {median(warm):.3f} s, best "
          f"{min(warm):.3f} s | target < 2 s: {'met' if median(warm) < 2 else 'MISSED'} |")
    return [(e.gguf_name, tuple(e.shape)) for e in plan.entries if len(e.shape) >= 2 and e.type != "F32"]


def bench_planner(named_shapes: list) -> None:
    from aqrecipe.planner import Budget, solve_plan
    from aqrecipe.planner.synthetic import synthetic_from_shapes

    m = synthetic_from_shapes(named_shapes)
    for bpw in (1.75, 2.5):
        t0 = time.perf_counter()
        r = solve_plan(m, Budget.from_bpw(bpw, m))
        dt = time.perf_counter() - t0
        print(f"| planner on the DeepSeek-V3-shaped measurement ({len(m.tensors)} tensors x up to 10 types), "
              f"{bpw} bpw | {dt:.2f} s ({r.method}) | target < 5 s: {'met' if dt < 5 else 'MISSED'} |")


def bench_memory(tmp: Path) -> None:
    folder = tmp / "moe-2gb"
    _write_random_moe(folder)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"random Mixtral-shaped model: {size / 2**30:.2f} GiB float32")
    aq = [sys.executable, "-m", "aqrecipe.cli"]
    runs = {
        "quantize --type Q4_K_M": aq + ["quantize", str(folder), "--type", "Q4_K_M", "-o", str(tmp / "q4.gguf"),
                                        "--no-eval", "--json"],
        "imatrix compute (128 x 256 tokens)": aq + ["imatrix", "compute", str(folder), "-o", str(tmp / "im.gguf"),
                                                    "--samples", "128", "--seq-len", "256", "--json"],
    }
    for label, cmd in runs.items():
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
        rss_kib = next(int(line.split(":")[1]) for line in proc.stderr.splitlines() if "Maximum resident" in line)
        print(f"| {label} on the {size / 2**30:.2f} GiB MoE | peak RSS {rss_kib / 2**20:.2f} GiB "
              f"({rss_kib * 1024 / size:.2f}x the model) | {time.perf_counter() - t0:.0f} s |")


def _write_random_moe(folder: Path) -> None:
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aqrecipe.models.demo import materialize_demo

    cfg = dict(MOE_2GB)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="512MB")
    del model
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(materialize_demo() / name, folder / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-memory", action="store_true", help="only the compile and planner timings")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        named = bench_compile(Path(tmp))
        bench_planner(named)
        if not args.skip_memory:
            bench_memory(Path(tmp))


if __name__ == "__main__":
    main()
