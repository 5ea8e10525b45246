"""The SmoothQuant equivalence transform.

For a norm whose output ``X`` feeds linears ``W_1..W_k`` (each ``[out, in]``)::

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)        (max|W_j| over every row of every W_i)
    norm weight w  ->  w / s          (gemma-style (1 + w) norms: (1 + w) / s - 1)
    W_i[:, j]      ->  W_i[:, j] * s_j

so ``(X / s) (W diag(s))^T = X W^T``: the float model is unchanged while the
activation ranges per channel are flattened. Channels that never fire
(max|X_j| = 0) or have all-zero weights keep ``s_j = 1``; the rest are clamped
to [1e-5, 1e5] so neither side overflows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from aqrecipe.smoothquant.mappings import SmoothGroup

S_MIN, S_MAX = 1e-5, 1e5


def smoothing_scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """Per-channel smoothing factors ``s`` (float32), see the module docstring."""
    a = np.asarray(act_max, dtype=np.float64)
    w = np.asarray(weight_max, dtype=np.float64)
    if a.shape != w.shape or a.ndim != 1:
        raise ValueError(f"act_max {a.shape} and weight_max {w.shape} must be equal 1-D shapes")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    live = (a > 0) & (w > 0) & np.isfinite(a) & np.isfinite(w)
    s = np.ones_like(a)
    s[live] = np.power(a[live], alpha) / np.power(w[live], 1.0 - alpha)
    return np.clip(s, S_MIN, S_MAX).astype(np.float32)


def weight_column_max(weights: Sequence[np.ndarray]) -> np.ndarray:
    """max |W[:, j]| over all rows of all ``[out, in]`` weights (which share ``in``)."""
    return np.max(np.stack([np.abs(np.asarray(w, dtype=np.float32)).max(axis=0) for w in weights]), axis=0)


def smooth_norm_weight(weight: np.ndarray, s: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """The norm weight after dividing its effective scale ``offset + w`` by ``s``."""
    w = np.asarray(weight, dtype=np.float64)
    return ((offset + w) / s - offset).astype(np.float32)


def apply_smoothing(model: Any, groups: Sequence[SmoothGroup], scales: Mapping[str, np.ndarray],
                    offset: float = 0.0) -> None:
    """Apply the transform in place to a torch HF model, per group key -> ``s``.

    Arithmetic is done in float64 and stored in the parameters' dtype.
    """
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for g in groups:
            s = torch.from_numpy(np.asarray(scales[g.key], dtype=np.float64))
            norm = modules[g.norm]
            w = norm.weight
            w.copy_(((offset + w.double()) / s - offset).to(w.dtype))
            bias = getattr(norm, "bias", None)
            if bias is not None:  # LayerNorm: the whole output is divided by s
                bias.copy_((bias.double() / s).to(bias.dtype))
            for name in g.linears:
                lw = modules[name].weight
                lw.copy_((lw.double() * s[None, :]).to(lw.dtype))
