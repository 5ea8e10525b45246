"""The planner's time on 8B- and 70B-shaped models, projected from parts measured on this machine.

What (issue 17, item 2): no 8B or 70B checkpoint is reachable here, and one would not fit this
machine in float32 anyway, so the planner's stages are timed on pieces of those shapes and summed
the way the planner runs them (``planner.measurement`` defaults: 8 windows x 128 tokens,
no KLD probes (fisher's default; ``calibrate_tensors: 8`` adds 40, shown apart), ``sample_rows``
512, the default candidates):

- round trips: ``round_trip`` (quantize + dequantize, as the measurement calls it) of every candidate
  type on a ``ROWS`` x width float32 sample with a log-normal importance, plus the proxy and Fisher
  arithmetic on it, per weight; the measurement does it on ``min(rows, sample_rows)`` rows of every
  tensor;
- forward (and forward + backward) of ONE decoder layer of the shape (transformers' LlamaDecoderLayer,
  random weights, float32, sdpa attention) and of the output head with its log-softmax, on
  ``TOKENS`` tokens, scaled to the planner's 1,024 tokens (matmul cost is linear in tokens);
- then: Fisher pass = forward + backward of every layer and the head; the reference pass and
  each probe = a forward pass, a probe from its tensor's layer on (the earlier layers
  replay the reference, and the probed tensors are spread over depth: half the layers on average);
  validation = 3 forward passes plus a round trip of every weight at its planned type and one at the
  mixture's (an upper bound: tensors the plan types like the mixture are not redone); packing = every
  weight encoded once (``codecs.quantize``); both at aqrecipe's Q4_K rates, the bulk of a planned
  file at these sizes.
- llama-quantize's Q4_K_M on the same shape: ``ggml_quantize_chunk`` (llama.cpp's per-chunk
  call, from llama-cpp-python's ggml library, 2 threads) rates of the types aqrecipe's Q4_K_M mixture
  (llama.cpp's rules, :mod:`aqrecipe.plan.mixtures`) gives each tensor, times its weights.

Reading and writing the files, model loading and the solver (< 5 s on a 70B-shaped measurement,
``bench/bench_planner.py``) are left out on both sides.

Usage: python bench/bench_planner_scale.py [--threads 2] [--shapes llama-3.1-8b llama-3.1-70b]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_pack import best_seconds  # noqa: E402

SHAPES = {  # the published configs' sizes
    "llama-3.1-8b": dict(n_layers=32, hidden=4096, ffn=14336, n_heads=32, n_kv_heads=8, vocab=128256),
    "llama-3.1-70b": dict(n_layers=80, hidden=8192, ffn=28672, n_heads=64, n_kv_heads=8, vocab=128256),
}
ROWS = 64  # rows per round-trip timing sample
REPS = 2  # timings are the best of this many runs
TOKENS = 256  # tokens per forward timing (2 x 128)
PLANNER_TOKENS = 8 * 128  # planner.measurement samples x seq_len
TYPES_PER_PROBED_TENSOR = 5
VALIDATION_PASSES = 3  # reference, plan, mixture


def gguf_tensors(s: dict) -> list[tuple[str, int, int]]:
    """(name, rows, row length) of every quantizable tensor, llama.cpp's layout."""
    h, kv = s["hidden"], s["hidden"] // s["n_heads"] * s["n_kv_heads"]
    layer = [("attn_q", h, h), ("attn_k", kv, h), ("attn_v", kv, h), ("attn_output", h, h),
             ("ffn_gate", s["ffn"], h), ("ffn_up", s["ffn"], h), ("ffn_down", h, s["ffn"])]
    out = [("token_embd.weight", s["vocab"], h), ("output.weight", s["vocab"], h)]
    return out + [(f"blk.{i}.{n}.weight", r, c) for i in range(s["n_layers"]) for n, r, c in layer]


def codec_seconds_per_weight(types: list[str], widths: set[int]) -> dict[str, dict]:
    """Seconds per weight, by (type, width): ``round_trip`` (the measurement's and the validation's
    call) and ``quantize`` (packing's); by width: ``errors``, the proxy and Fisher arithmetic of one option."""
    from aqrecipe.planner.fisher import fisher_kld
    from aqrecipe.planner.proxy import proxy_error, round_trip
    from aqrecipe.quant import codecs

    rng = np.random.default_rng(0)
    out: dict[str, dict] = {"round_trip": {}, "quantize": {}, "errors": {}}
    for width in sorted(widths):
        w = rng.standard_normal((ROWS, width)).astype(np.float32)
        imp = rng.lognormal(0.0, 1.0, width).astype(np.float32)
        sens = rng.random((ROWS, width)).astype(np.float32)
        rows = np.ones(ROWS)
        w_hat = round_trip(w, types[0], imp)

        def errors() -> None:
            proxy_error(w, w_hat, imp, rows)
            fisher_kld(sens, w, w_hat, rows)

        out["errors"][width] = best_seconds(errors, REPS) / w.size
        for t in types:
            round_trip(w[:2], t, imp)
            out["round_trip"][(t, width)] = best_seconds(lambda: round_trip(w, t, imp), REPS) / w.size
            out["quantize"][(t, width)] = best_seconds(lambda: codecs.quantize(w, t, imp), REPS) / w.size
    return out


def ggml_seconds_per_weight(types: set[str], widths: set[int], threads: int) -> dict[tuple[str, int], float] | None:
    from bench_pack import _ggml, ggml_quantize
    from gguf import GGMLQuantizationType

    lib = _ggml()
    if lib is None:
        return None
    rng = np.random.default_rng(0)
    rates = {}
    for width in sorted(widths):
        w = rng.standard_normal((ROWS * 4, width)).astype(np.float32)
        imp = rng.lognormal(0.0, 1.0, width).astype(np.float32)
        for t in sorted(types):
            lib.ggml_quantize_init(int(GGMLQuantizationType[t]))
            rates[(t, width)] = best_seconds(lambda: ggml_quantize(lib, w, t, imp, threads), REPS) / w.size
    return rates


def layer_seconds(s: dict) -> dict[str, float]:
    """Forward and forward + backward of one decoder layer and of the head, on TOKENS tokens."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["ffn"], num_hidden_layers=1,
                         num_attention_heads=s["n_heads"], num_key_value_heads=s["n_kv_heads"],
                         vocab_size=s["vocab"], attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cpu"):
        layer = LlamaDecoderLayer(config, layer_idx=0).float()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(2, TOKENS // 2, s["hidden"])
    pos = torch.arange(TOKENS // 2)[None].expand(2, -1)
    rope = LlamaRotaryEmbedding(config)(x, pos)

    def forward() -> torch.Tensor:
        out = layer(x, position_embeddings=rope, position_ids=pos, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out

    def forward_backward() -> None:
        x.requires_grad_(True)
        forward().square().mean().backward()
        x.requires_grad_(False)
        layer.zero_grad(set_to_none=True)
        x.grad = None

    with torch.inference_mode():
        forward()
        f_layer = best_seconds(forward, REPS)
    fb_layer = best_seconds(forward_backward, REPS)
    del layer
    head = torch.nn.Linear(s["hidden"], s["vocab"], bias=False)
    torch.nn.init.normal_(head.weight, std=0.02)
    h = torch.randn(TOKENS, s["hidden"])
    labels = torch.randint(0, s["vocab"], (TOKENS,))

    def head_forward() -> None:
        with torch.inference_mode():
            torch.log_softmax(head(h), dim=-1)

    def head_forward_backward() -> None:
        h.requires_grad_(True)
        torch.nn.functional.cross_entropy(head(h), labels, reduction="sum").backward()
        h.requires_grad_(False)
        head.zero_grad(set_to_none=True)
        h.grad = None

    return {"f_layer": f_layer, "fb_layer": fb_layer, "f_head": best_seconds(head_forward, REPS),
            "fb_head": best_seconds(head_forward_backward, REPS)}


def q4_k_m_types(s: dict) -> dict[str, str]:
    """The type llama.cpp's Q4_K_M gives each tensor (aqrecipe's copy of its rules)."""
    from aqrecipe.plan.mixtures import TensorContext, get_mixture, mixture_type
    from aqrecipe.models.tensor_names import layer_of

    mix = get_mixture("Q4_K_M")
    return {name: mixture_type(mix, mix.base_type, TensorContext(
        gguf_name=name, row_len=cols, layer=layer_of(name), n_layers=s["n_layers"],
        n_gqa=s["n_heads"] // s["n_kv_heads"], has_output=True))[0]
        for name, _rows, cols in gguf_tensors(s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from aqrecipe.planner.measurement import candidate_types
    from aqrecipe.recipe.sections import DEFAULT_CANDIDATES, MeasurementSpec

    sample_rows = MeasurementSpec().sample_rows
    scale = PLANNER_TOKENS / TOKENS
    for shape in args.shapes:
        s = SHAPES[shape]
        tensors = gguf_tensors(s)
        widths = {c for _, _, c in tensors}
        types = sorted({t for w in widths for t in candidate_types(DEFAULT_CANDIDATES, w)})
        codec = codec_seconds_per_weight(types, widths)
        rt, errors = codec["round_trip"], codec["errors"]
        mixture = q4_k_m_types(s)
        ggml = ggml_seconds_per_weight(set(mixture.values()), widths, args.threads)
        lt = layer_seconds(s)
        n_layers = s["n_layers"]
        n_weights = sum(r * c for _, r, c in tensors)
        round_trips = sum(min(r, sample_rows) * c * (rt[(t, c)] + errors[c])
                          for _, r, c in tensors for t in candidate_types(DEFAULT_CANDIDATES, c))
        forward = scale * (n_layers * lt["f_layer"] + lt["f_head"])
        fisher = scale * (n_layers * lt["fb_layer"] + lt["fb_head"])
        probe = scale * ((n_layers + 1) / 2 * lt["f_layer"] + lt["f_head"])
        probes = MeasurementSpec().probed_tensors * TYPES_PER_PROBED_TENSOR * probe  # 0 by default (fisher)
        probes_8 = 8 * TYPES_PER_PROBED_TENSOR * probe
        full_round_trip = sum(r * c * rt[("Q4_K", c)] for _, r, c in tensors)
        validation = VALIDATION_PASSES * forward + 2 * full_round_trip  # the plan's and the mixture's round trips
        packing = sum(r * c * codec["quantize"][("Q4_K", c)] for _, r, c in tensors)
        total = round_trips + fisher + forward + probes + validation + packing
        print(f"\n## {shape}: {n_layers} layers, {n_weights / 1e9:.2f} B quantizable weights "
              f"(threads={args.threads})\n")
        print(f"one layer, {TOKENS} tokens: forward {lt['f_layer']:.2f} s, forward+backward {lt['fb_layer']:.2f} s; "
              f"head: {lt['f_head']:.2f} s, {lt['fb_head']:.2f} s")
        print("proxy + Fisher arithmetic per option, M weights/s: " + ", ".join(
            f"@{c} {1e-6 / v:.1f}" for c, v in sorted(errors.items())))
        print("round trip, M weights/s: " + ", ".join(
            f"{t}@{c} {1e-6 / v:.1f}" for (t, c), v in sorted(rt.items(), key=lambda kv: (kv[0][1], kv[0][0]))))
        print("\n| stage | seconds |\n|---|---:|")
        for label, sec in (("round trips (sampled rows, every candidate)", round_trips),
                           ("Fisher pass (forward + backward, 1,024 tokens)", fisher),
                           ("reference pass", forward),
                           (f"KLD probes, default ({round(probes / probe)} probes)", probes),
                           ("validation (3 forward passes + every weight's round trip at the plan's and at the "
                            "mixture's type)", validation),
                           ("packing", packing), ("**planned file, all stages (defaults)**", total),
                           ("with `calibrate_tensors: 8`: 40 KLD probes (replayed prefix) more", probes_8)):
            print(f"| {label} | {sec:,.0f} |")
        if ggml is not None:
            llama = sum(r * c * ggml[(mixture[n], c)] for n, r, c in tensors)
            print(f"| llama-quantize Q4_K_M (encoding only) | {llama:,.0f} |")
            print(f"\nplanned file / llama-quantize Q4_K_M: {total / llama:.1f}x (with 40 probes "
                  f"{(total + probes_8 - probes) / llama:.1f}x; the stages without torch, round trips + "
                  f"validation's round trips + packing: {(round_trips + 2 * full_round_trip + packing) / llama:.1f}x)")
        params = n_weights + sum(4 * s["hidden"] for _ in range(n_layers))
        print(f"float32 model {4 * params / 2**30:.0f} GiB; the Fisher pass holds the gradients too: "
              f"{8 * params / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()
