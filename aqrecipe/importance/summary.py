"""``inspect``-style summaries of an ImportanceMatrix: a JSON-friendly dict and a text table."""

from __future__ import annotations

from typing import Any

from aqrecipe.importance.model import NO_SUPER_WEIGHT, ImportanceMatrix


def super_weight_table(obj: ImportanceMatrix) -> str:
    """One line per super weight: layer, tensor, row, column, value, spike, z, saliency."""
    if not obj.super_weights:
        return NO_SUPER_WEIGHT
    head = (f"{'#':>2} {'layer':>5} {'tensor':<24} {'row':>5} {'col':>5} {'value':>9} "
            f"{'max|out|':>10} {'spike':>7} {'max|in|':>9} {'z':>6} {'share':>5} {'saliency':>9} found_by")
    lines = [head, "-" * len(head)]
    for i, sw in enumerate(obj.super_weights):
        lines.append(f"{i:>2} {sw.layer:>5} {sw.tensor:<24} {sw.row:>5} {sw.col:>5} {sw.value:>9.4f} "
                     f"{sw.max_out:>10.1f} {('x%.0f' % sw.spike_ratio) if sw.spike_ratio else '-':>7} "
                     f"{sw.max_in:>9.1f} {sw.weight_z:>6.1f} {sw.share:>5.2f} {sw.saliency:>9.3g} {sw.found_by}")
    return "\n".join(lines)


def layer_table(obj: ImportanceMatrix, metrics: tuple[str, ...] = ("imatrix_norm", "gradient_norm")) -> str:
    """Per-layer scores (normalised metrics present in the object), super-weight layers starred."""
    present = [m for m in metrics if any(m in v for v in obj.layer_scores.values())]
    marked = {sw.layer for sw in obj.super_weights}
    lines = [f"{'layer':>5}  " + "  ".join(f"{m:>13}" for m in present) + "  super"]
    for layer, scores in sorted(obj.layer_scores.items()):
        cells = "  ".join(f"{scores.get(m, 0.0):>13.4f}" for m in present)
        lines.append(f"{layer:>5}  {cells}  {'*' if layer in marked else ''}")
    return "\n".join(lines)


def summarize_importance(obj: ImportanceMatrix) -> tuple[dict[str, Any], str]:
    """(summary dict, human text) for ``aqrecipe inspect`` / ``report``."""
    top_layers = sorted(obj.layer_scores.items(),
                        key=lambda kv: -kv[1].get("gradient_norm", kv[1].get("imatrix_norm", 0.0)))[:5]
    summary = {
        "verdict": obj.verdict,
        "computation_method": obj.computation_method,
        "calibration_dataset_info": dict(obj.calibration_dataset_info),
        "super_weights": [sw.to_dict() for sw in obj.super_weights],
        "super_weight_indices": [list(i) for i in obj.super_weight_indices],
        "n_tensors_scored": len(obj.tensor_scores),
        "n_layers_scored": len(obj.layer_scores),
        "top_layers": [int(k) for k, _ in top_layers],
        "notes": list(obj.notes),
    }
    info = ", ".join(f"{k}={v}" for k, v in sorted(obj.calibration_dataset_info.items()))
    parts = [f"importance: {obj.verdict}", f"method: {obj.computation_method}", f"calibration: {info}", "",
             super_weight_table(obj)]
    if obj.notes:
        parts += ["", "notes:"] + [f"  - {n}" for n in obj.notes if n != NO_SUPER_WEIGHT or obj.super_weights]
    if obj.layer_scores:
        parts += ["", layer_table(obj)]
    return summary, "\n".join(p for p in parts if p is not None).rstrip() + "\n"
