"""Synthetic measurements of a given shape (for the solver tests and the planner benchmark).

Errors follow a plausible law, ``sensitivity * 2 ** (-1.6 * bpw)``, with a
per-tensor sensitivity drawn from a fixed seed: no model is read.
"""

from __future__ import annotations

from typing import Sequence

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
    named = [(f"blk.{layer}.{role}.weight", shape) for layer in range(n_layers) for role, shape in shapes.items()]
    return synthetic_from_shapes(named, types, seed)


def synthetic_from_shapes(named_shapes: Sequence[tuple[str, tuple[int, ...]]],
                          types: tuple[str, ...] = TEN_TYPES, seed: int = 0) -> Measurement:
    """One tensor per ``(GGUF name, shape)`` (2-D, or 3-D merged experts) with every type of ``types``
    that fits its rows; the first eighth of the layers is three times as sensitive."""
    from aqrecipe.models.tensor_names import layer_of, role_of

    rng = np.random.default_rng(seed)
    layers = [layer_of(name) for name, _ in named_shapes]
    n_layers = 1 + max((i for i in layers if i is not None), default=0)
    tensors = []
    for (name, shape), layer in zip(named_shapes, layers):
        early = layer is not None and layer < n_layers // 8
        sens = float(rng.lognormal(0.0, 1.0)) * (3.0 if early else 1.0)
        n_params = int(np.prod(shape))
        opts = []
        for t in candidate_types(types, shape[-1]):
            nb = tensor_bytes(t, shape)
            opts.append(TypeOption(t, nb, sens * 2.0 ** (-1.6 * 8.0 * nb / n_params) * float(rng.uniform(0.8, 1.25))))
        tensors.append(TensorMeasurement(name, name, role_of(name), layer, tuple(shape), n_params, tuple(opts)))
    return Measurement("synthetic", "none", types, "proxy", tuple(tensors), fixed_bytes=0, fixed_params=0)
