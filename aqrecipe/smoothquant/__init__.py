"""SmoothQuant W8A8 for INT8 engines.

Calibration statistics (per-channel max |x| at every linear's input, from the
calibration runner's observers) give smoothing factors ``s`` per norm group;
the norm weight is divided by ``s`` and the linears' input columns multiplied
by it (an exact equivalence of the float model). The smoothed model is then
simulated in W8A8 (int8 per-channel weights, int8 per-token or per-tensor
activations), evaluated against the float model, and written as a
compressed-tensors ``int-quantized`` checkpoint or a Q8_0 GGUF. The run that
does all this is :func:`aqrecipe.apply.smoothquant.run_smoothquant`; this
folder holds the technique (mappings, scales, simulation, analysis).

Importing this package does not import torch.
"""

from __future__ import annotations

from aqrecipe.smoothquant.config import SCHEMA_FRAGMENT, GroupSpec, SmoothQuantConfig, SmoothQuantError
from aqrecipe.smoothquant.mappings import SmoothGroup, resolve_groups
from aqrecipe.smoothquant.scales import smooth_norm_weight, smoothing_scales, weight_column_max

__all__ = [
    "SCHEMA_FRAGMENT",
    "GroupSpec",
    "SmoothGroup",
    "SmoothQuantConfig",
    "SmoothQuantError",
    "resolve_groups",
    "smooth_norm_weight",
    "smoothing_scales",
    "weight_column_max",
]
