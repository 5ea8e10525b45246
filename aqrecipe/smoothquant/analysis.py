"""Reports: smoothing-scale statistics, activation outlier ratios, quantization error, problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from aqrecipe.smoothquant.fakequant import fake_quant_per_token, fake_quant_static, static_input_scale

if TYPE_CHECKING:
    from aqrecipe.smoothquant.mappings import SmoothGroup


def outlier_ratio(act_max: np.ndarray) -> float:
    """max / median of the per-channel max |x| (1.0 = flat; large = outlier channels)."""
    med = float(np.median(act_max))
    return float(np.max(act_max)) / med if med > 0 else float("inf")


def group_report(group: SmoothGroup, alpha: float, s: np.ndarray, act_max: np.ndarray,
                 weight_max: np.ndarray) -> dict[str, Any]:
    """Per-group summary: scale min / median / max and outlier ratios before and after smoothing."""
    return {
        "group": group.key, "layer": group.layer, "kind": group.kind, "alpha": alpha,
        "linears": list(group.linears_gguf),
        "scale_min": float(s.min()), "scale_median": float(np.median(s)), "scale_max": float(s.max()),
        "act_outlier_before": outlier_ratio(act_max),
        "act_outlier_after": outlier_ratio(act_max / s),
        "weight_outlier_before": outlier_ratio(weight_max),
        "weight_outlier_after": outlier_ratio(weight_max * s),
    }


def scale_arrays(groups: Sequence[Any], scales: Mapping[str, np.ndarray], act_max: Mapping[str, np.ndarray],
                 weight_max: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of the scales file, ``<group>.{smooth_scale,act_max,weight_max,...}`` float32."""
    out: dict[str, np.ndarray] = {}
    for g in groups:
        s, a, w = scales[g.key], act_max[g.key], weight_max[g.key]
        out[f"{g.key}.smooth_scale"] = s.astype(np.float32)
        out[f"{g.key}.act_max"] = a.astype(np.float32)
        out[f"{g.key}.weight_max"] = w.astype(np.float32)
        out[f"{g.key}.act_max_smoothed"] = (a / s).astype(np.float32)
        out[f"{g.key}.weight_max_smoothed"] = (w * s).astype(np.float32)
    return out


def save_scales(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Write the scales file (safetensors, atomic); metadata values are JSON strings."""
    from safetensors.numpy import save_file

    from aqrecipe.formats.fileio import atomic_path

    with atomic_path(Path(path)) as tmp:
        save_file(dict(sorted(arrays.items())), str(tmp),
                  metadata={k: json.dumps(v, sort_keys=True) for k, v in sorted(metadata.items())})


def activation_errors(model: Any, windows: np.ndarray, smooth: Mapping[str, np.ndarray],
                      static_max: Mapping[str, np.ndarray] | None, batch: int = 4) -> dict[str, tuple[float, float]]:
    """Relative MSE of int8 activation fake-quant at every decoder linear's input, before / after smoothing.

    ``model`` is the unsmoothed float model; ``smooth`` maps a linear's module
    name to its ``s`` (linears not in it are not smoothed, so both numbers are
    equal). ``static_max`` (module name -> calibrated per-channel max |x|, unsmoothed) selects
    per-tensor static activations; None selects per-token dynamic.
    """
    import torch

    from aqrecipe.smoothquant.fakequant import decoder_linears

    sums: dict[str, np.ndarray] = {}  # err_before, err_after, norm_before, norm_after
    tensors = {n: torch.from_numpy(np.asarray(s, dtype=np.float32)) for n, s in smooth.items()}

    def quant(x: torch.Tensor, name: str, smoothed: bool) -> torch.Tensor:
        if static_max is None or name not in static_max:
            return fake_quant_per_token(x)
        channels = np.asarray(static_max[name], dtype=np.float64)
        if smoothed:
            channels = channels / np.asarray(smooth[name], dtype=np.float64)
        return fake_quant_static(x, static_input_scale(float(channels.max())))

    def hook_for(name: str):
        def hook(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            s = tensors.get(name)
            xs = x if s is None else x / s.to(torch.float64)
            eb = float((quant(x, name, False) - x).pow(2).sum())
            ea = float((quant(xs, name, s is not None) - xs).pow(2).sum())
            acc = sums.setdefault(name, np.zeros(4))
            acc += (eb, ea, float(x.pow(2).sum()), float(xs.pow(2).sum()))
        return hook

    handles = [model.get_submodule(n).register_forward_hook(hook_for(n)) for n in decoder_linears(model)]
    try:
        with torch.inference_mode():
            for start in range(0, len(windows), batch):
                ids = torch.from_numpy(np.asarray(windows[start:start + batch], dtype=np.int64))
                model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: (float(v[0] / max(v[2], 1e-30)), float(v[1] / max(v[3], 1e-30))) for n, v in sums.items()}


def problem_layers(errors: Mapping[str, tuple[float, float]], gguf_names: Mapping[str, str],
                   smoothed_alpha: Mapping[str, float], threshold: float) -> list[dict[str, Any]]:
    """Linears whose activation error after smoothing stays above ``threshold``, with a suggestion."""
    out = []
    for name, (before, after) in errors.items():
        if after <= threshold:
            continue
        alpha = smoothed_alpha.get(name)
        if alpha is None:
            hint = ("not norm-preceded, so smoothing cannot reach it: keep this linear in 16-bit "
                    "(compressed-tensors 'ignore') or use per-channel activation scales")
        elif alpha < 0.9:
            hint = (f"raise alpha for its group (now {alpha:g}, try {min(alpha + 0.2, 1.0):g}), "
                    "or keep this linear in 16-bit")
        else:
            hint = "alpha is already high: keep this linear in 16-bit or use per-channel activation scales"
        out.append({"linear": gguf_names.get(name, name), "module": name, "act_rel_mse_before": float(before),
                    "act_rel_mse_after": float(after), "suggestion": hint})
    return out
