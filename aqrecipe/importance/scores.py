"""Per-tensor and per-layer importance scores for the planner (imatrix and gradient).

``imatrix``: the sum over columns of mean x^2 (how much signal the tensor's
inputs carry); ``gradient``: sum |W * dL/dW| (first-order loss change if the
tensor were removed). Each metric also comes normalised to sum 1 over tensors
(``*_norm``) so metrics of different scale can be compared or mixed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from aqrecipe.models.tensor_names import layer_of

if TYPE_CHECKING:
    from aqrecipe.imatrix import ImatrixData


def imatrix_tensor_scores(imatrix: ImatrixData) -> dict[str, float]:
    """Sum of mean x^2 over columns for every entry of an :class:`~aqrecipe.imatrix.ImatrixData`."""
    out = {}
    for name in imatrix.names:
        imp = imatrix.importance(name)
        out[name] = float(np.sum(imp, dtype=np.float64))
    return out


def combine_scores(metrics: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, dict[str, float]],
                                                                        dict[int, dict[str, float]]]:
    """``{metric: {tensor: score}}`` -> (tensor_scores, layer_scores) with ``*_norm`` forms added."""
    tensors: dict[str, dict[str, float]] = {}
    for metric, scores in sorted(metrics.items()):
        total = float(sum(scores.values()))
        for name, v in scores.items():
            row = tensors.setdefault(name, {})
            row[metric] = float(v)
            row[f"{metric}_norm"] = float(v) / total if total > 0 else 0.0
    layers: dict[int, dict[str, float]] = {}
    for name in sorted(tensors):
        layer = layer_of(name)
        if layer is None:
            continue
        acc = layers.setdefault(layer, {})
        for k, v in tensors[name].items():
            acc[k] = acc.get(k, 0.0) + v
    return dict(sorted(tensors.items())), dict(sorted(layers.items()))
