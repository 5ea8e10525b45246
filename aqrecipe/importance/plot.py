"""PNG of per-layer importance with the super weights marked (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aqrecipe.formats.fileio import atomic_path
from aqrecipe.importance.model import ImportanceMatrix


def _spike_profile(obj: ImportanceMatrix) -> tuple[list[int], list[float]]:
    layers = sorted(int(k.rsplit(".", 1)[1]) for k in obj.arrays if k.startswith("down_proj.max_out."))
    return layers, [float(np.max(obj.arrays[f"down_proj.max_out.{i}"])) for i in layers]


def plot_importance(obj: ImportanceMatrix, dest: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG: top, per-layer scores (normalised imatrix / gradient); bottom, the ffn_down
    output peak per layer (log scale) with each super weight annotated (row, column, value).
    Deterministic bytes for the same input (no timestamps in the PNG metadata)."""
    from aqrecipe.optional import require

    matplotlib = require("matplotlib", "plotting importance (--plot)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest = Path(dest)
    layers = sorted(obj.layer_scores)
    spike_layers, peaks = _spike_profile(obj)
    n_panels = 2 if spike_layers else 1
    fig, axes = plt.subplots(n_panels, 1, figsize=(9, 3.2 * n_panels), squeeze=False, dpi=100)
    ax = axes[0][0]
    width = 0.4
    for k, (metric, color) in enumerate((("imatrix_norm", "#4C72B0"), ("gradient_norm", "#DD8452"))):
        vals = [obj.layer_scores[i].get(metric) for i in layers]
        if any(v is not None for v in vals):
            ax.bar(np.array(layers) + (k - 0.5) * width, [v or 0.0 for v in vals], width, label=metric, color=color)
    for sw in obj.super_weights:
        ax.axvline(sw.layer, color="#C44E52", ls="--", lw=1)
    ax.set_yscale("log")  # a super activation makes one layer's imatrix share dwarf the rest
    ax.set_xlabel("layer")
    ax.set_ylabel("share of total (log)")
    ax.set_title(title or f"per-layer importance: {obj.verdict}")
    if layers:
        ax.legend(loc="upper left", fontsize=8, ncol=2)
        ax.set_xlim(min(layers) - 1, max(layers) + 3)
    if spike_layers:
        ax2 = axes[1][0]
        ax2.semilogy(spike_layers, peaks, "o-", color="#55A868", label="max |ffn_down output|")
        by_layer: dict[int, list[str]] = {}
        for sw in obj.super_weights:
            by_layer.setdefault(sw.layer, []).append(f"[{sw.row},{sw.col}] {sw.value:+.3f}")
        for layer, labels in sorted(by_layer.items()):
            y = peaks[spike_layers.index(layer)] if layer in spike_layers else 1.0
            ax2.plot([layer], [y], marker="*", ms=16, color="#C44E52")
            ax2.annotate("\n".join([f"blk.{layer}.ffn_down"] + labels), (layer, y), textcoords="offset points",
                         xytext=(8, -8 - 10 * len(labels)), fontsize=8, color="#C44E52")
        ax2.set_xlim(min(spike_layers) - 1, max(spike_layers) + 3)  # room for the labels
        ax2.set_xlabel("layer")
        ax2.set_ylabel("max |output| (log)")
        ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return dest
