"""The importance stage: super weights (activation, gradient or both) and per-layer scores.

``analyze_importance`` is what apply calls after calibration. It never invents a
super weight: when no spike passes the thresholds the result says
"no clear super weight" and lists why the strongest spikes were rejected.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from aqrecipe.importance.activation import (DETECTION, DownRanges, DownWeights, Measure, detect_by_activation,
                                            runner_measure, weight_z)
from aqrecipe.importance.config import DetectSpec
from aqrecipe.importance.gradient import GradientResult, gradient_saliency
from aqrecipe.importance.model import NO_SUPER_WEIGHT, ImportanceMatrix, SuperWeight
from aqrecipe.importance.scores import combine_scores, imatrix_tensor_scores
from aqrecipe.models.tensor_names import layer_of

if TYPE_CHECKING:
    from aqrecipe.calibration.runner import CalibrationResult
    from aqrecipe.imatrix import ImatrixData
    from aqrecipe.models.protocol import WeightSource


def detection_windows(source: WeightSource, spec: DetectSpec) -> np.ndarray:
    """``spec.samples`` windows of ``spec.seq_len`` tokens from the built-in calibration split."""
    from aqrecipe.calibration.data import CalibrationSpec, calibration_windows, load_tokenizer

    cal = CalibrationSpec(samples=spec.samples, seq_len=spec.seq_len, seed=spec.seed, enforce_sample_range=False)
    return calibration_windows(cal, load_tokenizer(str(source.tokenizer_dir or source.path)))


def gradient_candidates(grad: GradientResult, weights: DownWeights, spec: DetectSpec) -> list[SuperWeight]:
    """ffn_down tensors whose largest |W*g| is ``gradient_ratio`` x the median of the others' maxima."""
    downs = {k: v for k, v in grad.tensor_max.items() if k.endswith(".ffn_down.weight")}
    out = []
    for name, peak in downs.items():
        others = [v for k, v in downs.items() if k != name]
        med = float(np.median(others)) if others else 0.0
        ratio = peak / med if med > 0 else 0.0
        if ratio < spec.gradient_ratio:
            continue
        layer = layer_of(name)
        row, col, value = grad.tensor_argmax[name]
        z = weight_z(weights.read(layer), value)
        if z >= spec.min_weight_z:
            out.append(SuperWeight(layer=layer, tensor=name, hf_name=weights.names[layer][1], row=row, col=col,
                                   value=value, weight_z=z, saliency=peak, saliency_ratio=ratio,
                                   found_by="gradient"))
    return sorted(out, key=lambda s: -s.saliency)


def merge(act: Sequence[SuperWeight], grad: GradientResult | None, grad_found: Sequence[SuperWeight],
          spec: DetectSpec) -> tuple[list[SuperWeight], list[str]]:
    """Combine the two rankings (see the module docstring of :mod:`aqrecipe.importance`)."""
    notes: list[str] = []
    if grad is None:
        return list(act)[: spec.max_count], notes
    base = grad.down_max_median()
    scored = []
    for sw in act:
        s = grad.lookups.get(sw.index, 0.0)
        scored.append(replace(sw, saliency=s, saliency_ratio=s / base if base > 0 else 0.0))
    if spec.type == "gradient":
        return list(grad_found)[: spec.max_count], notes
    kept = []
    by_grad = {g.index for g in grad_found}
    for sw in scored:
        if sw.index in by_grad or sw.saliency_ratio >= spec.confirm_ratio:
            kept.append(sw)
        else:
            notes.append(f"{sw.tensor}[{sw.row},{sw.col}]: activation spike x{sw.spike_ratio:.0f} but gradient "
                         f"saliency only {sw.saliency_ratio:.2f}x the typical ffn_down maximum (< confirm_ratio "
                         f"{spec.confirm_ratio:g}); not a super weight")
    seen = {sw.index for sw in kept}
    for g in grad_found:
        if g.index in seen:
            kept = [replace(k, found_by="combined") if k.index == g.index else k for k in kept]
        else:
            kept.append(g)
    kept.sort(key=lambda s: (-s.saliency, s.layer, s.row, s.col))
    return kept[: spec.max_count], notes


def analyze_importance(source: WeightSource, spec: DetectSpec = DetectSpec(), *, imatrix: ImatrixData | None = None,
                       calibration: CalibrationResult | None = None, windows: np.ndarray | None = None,
                       measure: Measure | None = None, dataset_info: dict[str, Any] | None = None) -> ImportanceMatrix:
    """Find super weights and score tensors/layers.

    ``source``: a :class:`~aqrecipe.models.ModelSource`. ``imatrix``: the run's
    :class:`~aqrecipe.imatrix.ImatrixData` (adds the ``imatrix`` scores).
    ``calibration``: a CalibrationResult whose DownProjRanges serve as the first
    activation pass. ``windows``: token windows for the extra passes (default:
    ``spec.samples x spec.seq_len`` from the built-in calibration split).
    """
    if measure is None or spec.type in ("gradient", "combined"):  # a torch pass: the HF folder is needed
        from aqrecipe.calibration.hf_model import require_hf_folder

        require_hf_folder(source, DETECTION)
    windows = detection_windows(source, spec) if windows is None else np.asarray(windows, dtype=np.int64)
    weights = DownWeights(source)
    act: list[SuperWeight] = []
    notes: list[str] = []
    rounds: list[DownRanges] = []
    if spec.type in ("activation", "combined") and spec.max_count > 0:
        first = DownRanges.from_result(calibration) if calibration is not None else None
        act, notes, rounds = detect_by_activation(measure or runner_measure(source, windows), weights, spec,
                                                  first=first)
    grad = None
    grad_found: list[SuperWeight] = []
    if spec.type in ("gradient", "combined"):
        grad = gradient_saliency(source, windows[: spec.gradient_samples], [sw.index for sw in act])
        grad_found = gradient_candidates(grad, weights, spec) if spec.max_count > 0 else []
    found, more = merge(act, grad, grad_found, spec)
    notes += more
    if not found:
        notes.insert(0, NO_SUPER_WEIGHT)
    metrics = {}
    if imatrix is not None:
        metrics["imatrix"] = imatrix_tensor_scores(imatrix)
    if grad is not None:
        metrics["gradient"] = grad.tensor_sum
    tensor_scores, layer_scores = combine_scores(metrics)
    arrays: dict[str, np.ndarray] = {}
    if rounds:
        for layer in sorted(rounds[0].max_out):
            arrays[f"down_proj.max_out.{layer}"] = rounds[0].max_out[layer]
            arrays[f"down_proj.max_in.{layer}"] = rounds[0].max_in[layer]
    if grad is not None:
        arrays.update({f"gradient.columns.{k}": v for k, v in grad.column_sums.items()})
    info = dict(dataset_info or {"source": "aqrecipe:builtin-wiki", "seed": spec.seed})
    info.update({"windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
                 "gradient_windows": int(min(spec.gradient_samples, windows.shape[0])) if grad else 0,
                 "first_pass": "calibration run" if calibration is not None else "detection windows",
                 "activation_rounds": len(rounds)})
    if grad is not None:
        info["gradient_loss"] = round(grad.loss, 6)
    return ImportanceMatrix(
        tensor_scores=tensor_scores, layer_scores=layer_scores, super_weights=tuple(found),
        computation_method=_method(spec, grad is not None, bool(rounds)), calibration_dataset_info=info,
        model_fingerprint=source.fingerprint(), notes=tuple(notes), arrays=arrays)


def _method(spec: DetectSpec, with_grad: bool, with_act: bool) -> str:
    parts = []
    if with_act:
        parts.append(f"activation(DownProjRanges; spike_ratio>={spec.spike_ratio:g}, z>={spec.min_weight_z:g}, "
                     f"share>={spec.min_share:g}, zero-and-repeat)")
    if with_grad:
        parts.append(f"gradient(|W*dL/dW|; gradient_ratio>={spec.gradient_ratio:g})")
    return f"{spec.type}: " + " + ".join(parts)
