"""Importance analysis and super-weight protection.

Importance lives in an :class:`ImportanceMatrix` (per-tensor and per-layer
scores from the imatrix and gradients, the super weights, how and on what data
they were computed), saved as JSON + safetensors for reuse.

Super weights are found from activations (a layer's ffn_down output spike
``spike_ratio`` x the other layers' median; row = spiking output channel,
column = the input channel that explains the spike; zero and repeat), from
gradients (``|W * dL/dW|`` outliers among ffn_down tensors) or both
(``combined``: activation candidates confirmed by a gradient saliency of at least
``confirm_ratio`` x the typical ffn_down maximum, plus gradient-only outliers, ranked by saliency).
Nothing is invented: without a clear spike the verdict is "no clear super weight".

Protection (:func:`protect_plan`): raise the holding tensors' GGUF type, boost
their columns in the imatrix; for simulated quantization / safetensors output,
:func:`restore_super_weights` writes the exact values back.

Importing this package imports neither torch nor matplotlib.
"""

from __future__ import annotations

from typing import Any

from aqrecipe.importance.config import SCHEMA_FRAGMENT, DetectSpec, ProtectSpec, SuperWeightsSection
from aqrecipe.importance.model import NO_SUPER_WEIGHT, ImportanceFileError, ImportanceMatrix, SuperWeight, load_importance, save_importance
from aqrecipe.importance.protect import boost_imatrix, fake_quantize, protect_plan, protection_rules, restore_super_weights
from aqrecipe.importance.summary import summarize_importance


def analyze_importance(*args: Any, **kwargs: Any) -> ImportanceMatrix:
    """See :func:`aqrecipe.importance.detect.analyze_importance` (needs torch; imported lazily)."""
    from aqrecipe.importance.detect import analyze_importance as _analyze

    return _analyze(*args, **kwargs)


def plot_importance(*args: Any, **kwargs: Any) -> Any:
    """See :func:`aqrecipe.importance.plot.plot_importance` (imports matplotlib lazily)."""
    from aqrecipe.importance.plot import plot_importance as _plot

    return _plot(*args, **kwargs)


__all__ = [
    "NO_SUPER_WEIGHT",
    "SCHEMA_FRAGMENT",
    "DetectSpec",
    "ImportanceFileError",
    "ImportanceMatrix",
    "ProtectSpec",
    "SuperWeight",
    "SuperWeightsSection",
    "analyze_importance",
    "boost_imatrix",
    "fake_quantize",
    "load_importance",
    "plot_importance",
    "protect_plan",
    "protection_rules",
    "restore_super_weights",
    "save_importance",
    "summarize_importance",
]
