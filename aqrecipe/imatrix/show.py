"""``aqrecipe imatrix show``: a per-layer table of an imatrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from aqrecipe.imatrix.data import ImatrixData
from aqrecipe.models.tensor_names import layer_of

def _order(name: str) -> tuple[int, str]:
    layer = layer_of(name)
    return (1 << 30 if layer is None else layer, name)


def summarize_imatrix(data: ImatrixData) -> tuple[dict[str, Any], str]:
    """(JSON-friendly dict, text table) with per-tensor n_cols, counts, mean/max importance."""
    rows = []
    for name in sorted(data.entries, key=_order):
        e = data.entries[name]
        imp = np.asarray(e.importance(), dtype=np.float64)
        rows.append({
            "tensor": name,
            "layer": layer_of(name),
            "n_cols": e.n_cols,
            "n_mat": e.n_mat,
            "counts": float(e.counts.max()) if e.counts.size else 0.0,
            "mean_importance": float(imp.mean()),
            "max_importance": float(imp.max()),
        })
    summary = {
        "datasets": list(data.datasets),
        "chunk_count": data.chunk_count,
        "chunk_size": data.chunk_size,
        "n_entries": len(rows),
        "tensors": rows,
    }
    lines = [
        f"imatrix: {len(rows)} tensors, {data.chunk_count} chunks of {data.chunk_size} tokens, "
        f"datasets: {', '.join(data.datasets) or '-'}",
        f"{'tensor':<34} {'n_cols':>7} {'counts':>10} {'mean imp':>11} {'max imp':>11}",
    ]
    for r in rows:
        cols = f"{r['n_cols']}" + (f"x{r['n_mat']}" if r["n_mat"] > 1 else "")
        lines.append(f"{r['tensor']:<34} {cols:>7} {r['counts']:>10.0f} "
                     f"{r['mean_importance']:>11.4g} {r['max_importance']:>11.4g}")
    return summary, "\n".join(lines)
