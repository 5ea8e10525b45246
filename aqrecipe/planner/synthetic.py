"""Synthetic measurements of a given shape (for the solver tests and the planner benchmark).

Errors follow a plausible law, ``sensitivity * 2 ** (-1.6 * bpw)``, with a
per-tensor sensitivity drawn from a fixed seed: no model is read.
"""

from __future__ import annotations

import numpy as np

from aqrecipe.planner.measurement import Measurement, TensorMeasurement, TypeOption, candidate_types
from aqrecipe.quant.sizes import tensor_bytes

LLAMA_70B_SHAPES = {  # HF order [out, in]
    "attn_q": (8192, 8192), "attn_k": (1024, 8192), "attn_v": (1024, 8192), "attn_output": (8192, 8192),
    "ffn_gate": (28672, 8192), "ffn_up": (28672, 8192), "ffn_down": (8192, 28672),
}
TEN_TYPES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16")


def synthetic_measurement(n_layers: int = 80, shapes: dict[str, tuple[int, int]] = LLAMA_70B_SHAPES,
                          types: tuple[str, ...] = TEN_TYPES, seed: int = 0) -> Measurement:
    """``n_layers`` x ``len(shapes)`` tensors with ``len(types)`` options each."""
    rng = np.random.default_rng(seed)
    tensors = []
    for layer in range(n_layers):
        for role, shape in shapes.items():
            sens = float(rng.lognormal(0.0, 1.0)) * (3.0 if layer < n_layers // 8 else 1.0)
            opts = []
            for t in candidate_types(types, shape[-1]):
                nb = tensor_bytes(t, shape)
                bpw = 8.0 * nb / (shape[0] * shape[1])
                opts.append(TypeOption(t, nb, sens * 2.0 ** (-1.6 * bpw) * float(rng.uniform(0.8, 1.25))))
            tensors.append(TensorMeasurement(f"blk.{layer}.{role}.weight", f"model.layers.{layer}.{role}",
                                             role, layer, shape, shape[0] * shape[1], tuple(opts)))
    return Measurement("synthetic", "none", types, "proxy", tuple(tensors), fixed_bytes=0, fixed_params=0)
