"""Per-layer, per-tensor report of a planned model: Markdown, JSON and a PNG bar chart."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aqrecipe.formats.fileio import atomic_path, atomic_write_text
from aqrecipe.plan import Plan
from aqrecipe.models.tensor_names import layer_of
from aqrecipe.planner.measurement import Measurement


@dataclass(frozen=True)
class TensorRow:
    gguf_name: str
    layer: int | None
    type: str
    bits_per_weight: float
    n_params: int
    n_bytes: int
    share: float  # of the total file-tensor bytes
    predicted_kld: float | None
    measured_kld: float | None


@dataclass(frozen=True)
class PlannerReport:
    rows: tuple[TensorRow, ...]
    total_bytes: int
    n_params: int
    predicted_kld: float
    budget: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # measured quality of the written file, when evaluated
    validation: dict[str, Any] | None = None  # plan vs the recipe's own types, measured (planner.validate)

    @property
    def f16_bytes(self) -> int:
        return 2 * self.n_params

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / self.n_params

    @property
    def compression_ratio(self) -> float:
        return self.f16_bytes / self.total_bytes

    def per_layer(self) -> dict[str, dict[str, float]]:
        """Layer label ("embd/output", "0", "1", ...) -> params, bytes, bpw, predicted KLD."""
        acc: dict[str, dict[str, float]] = defaultdict(lambda: {"n_params": 0, "n_bytes": 0, "predicted_kld": 0.0})
        for r in self.rows:
            a = acc["embd/output" if r.layer is None else str(r.layer)]
            a["n_params"] += r.n_params
            a["n_bytes"] += r.n_bytes
            a["predicted_kld"] += r.predicted_kld or 0.0
        for a in acc.values():
            a["bits_per_weight"] = 8.0 * a["n_bytes"] / a["n_params"] if a["n_params"] else 0.0
        return dict(sorted(acc.items(), key=lambda kv: (kv[0] != "embd/output", int(kv[0]) if kv[0].isdigit() else -1)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensors": [asdict(r) for r in self.rows],
            "layers": self.per_layer(),
            "totals": {"bytes": self.total_bytes, "n_params": self.n_params, "f16_bytes": self.f16_bytes,
                       "bits_per_weight": round(self.bits_per_weight, 4),
                       "compression_ratio_vs_f16": round(self.compression_ratio, 4),
                       "predicted_kld": self.predicted_kld},
            "budget": self.budget, "method": self.method, "calibration": self.calibration,
            "evaluation": self.evaluation, "validation": self.validation,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def to_markdown(self) -> str:
        out = ["| tensor | layer | type | bpw | params | bytes | share | predicted KLD | measured KLD |",
               "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            fmt = lambda v: "" if v is None else f"{v:.3g}"  # noqa: E731
            out.append(f"| {r.gguf_name} | {'' if r.layer is None else r.layer} | {r.type} | "
                       f"{r.bits_per_weight:.3f} | {r.n_params:,} | {r.n_bytes:,} | {100 * r.share:.2f}% | "
                       f"{fmt(r.predicted_kld)} | {fmt(r.measured_kld)} |")
        out += ["", "| layer | params | bytes | bpw | predicted KLD |", "|---|---:|---:|---:|---:|"]
        for k, a in self.per_layer().items():
            out.append(f"| {k} | {int(a['n_params']):,} | {int(a['n_bytes']):,} | "
                       f"{a['bits_per_weight']:.3f} | {a['predicted_kld']:.3g} |")
        out += ["", f"**Total**: {self.n_params:,} params, {self.total_bytes:,} bytes, "
                    f"{self.bits_per_weight:.3f} bpw, {self.compression_ratio:.2f}x smaller than F16 "
                    f"({self.f16_bytes:,} bytes); predicted KLD {self.predicted_kld:.4g} ({self.method})."]
        if self.evaluation:
            out.append("**Measured**: " + ", ".join(f"{k} {v}" for k, v in sorted(self.evaluation.items())))
        if self.validation:
            v = self.validation
            out.append(f"**Validated** on {v['windows']} x {v['seq_len']} held-out tokens: plan KLD "
                       f"{v['plan_kld']:.4g}, {v['baseline']} {v['baseline_kld']:.4g}; shipped: "
                       f"{'the plan' if v['shipped'] == 'plan' else v['baseline']}"
                       + (f" ({v['float_tensors']} tensors a probe cannot swap left float in both)"
                          if v["float_tensors"] else "") + ".")
        return "\n".join(out) + "\n"

    def save(self, stem: Path) -> list[Path]:
        """Write ``stem.md``, ``stem.json`` and ``stem.png`` (all atomic); returns the paths.

        Without matplotlib the PNG is skipped with a warning (the report's numbers are in the
        other two); :meth:`save_png` alone raises instead."""
        from aqrecipe.optional import require_or_skip

        stem = Path(stem)
        md, js, png = stem.with_suffix(".md"), stem.with_suffix(".json"), stem.with_suffix(".png")
        atomic_write_text(md, self.to_markdown())
        atomic_write_text(js, self.to_json())
        if require_or_skip("matplotlib", f"the planner report's chart {png.name}") is None:
            return [md, js]
        self.save_png(png)
        return [md, js, png]

    def save_png(self, path: Path) -> None:
        """Stacked bars of bytes per layer, one colour per type, with the layer bpw on top."""
        from aqrecipe.optional import require

        matplotlib = require("matplotlib", "the planner report's chart")
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        layers = list(self.per_layer())
        types = sorted({r.type for r in self.rows})
        by = {(("embd/output" if r.layer is None else str(r.layer)), t): 0 for r in self.rows for t in types}
        for r in self.rows:
            by[("embd/output" if r.layer is None else str(r.layer), r.type)] += r.n_bytes
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 4))
        bottom = [0.0] * len(layers)
        cmap = plt.get_cmap("tab10")
        for k, t in enumerate(types):
            vals = [by.get((lay, t), 0) / 1e6 for lay in layers]
            ax.bar(range(len(layers)), vals, bottom=bottom, label=t, color=cmap(k % 10))
            bottom = [b + v for b, v in zip(bottom, vals)]
        per = self.per_layer()
        for i, lay in enumerate(layers):
            ax.text(i, bottom[i], f"{per[lay]['bits_per_weight']:.1f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
        ax.set_ylabel("MB")
        ax.set_title(f"{self.bits_per_weight:.2f} bpw, {self.compression_ratio:.2f}x vs F16 (bars: bytes; labels: bpw)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
        plt.close(fig)


def build_report(plan: Plan, m: Measurement | None = None, *, budget: dict | None = None,
                 method: str = "", evaluation: dict | None = None, validation: dict | None = None) -> PlannerReport:
    """Report of a compiled plan; predictions come from ``m`` (None where unmeasured)."""
    meas = {t.gguf_name: t for t in m.tensors} if m is not None else {}
    rows, pred_total = [], 0.0
    for e in plan.entries:
        if not e.quantized and e.type == "F32":
            continue  # norms and 1-D tensors: counted in the totals, not listed
        t = meas.get(e.gguf_name)
        opt = next((o for o in t.options if o.type == e.type), None) if t is not None else None
        pred = m.predicted(t, opt) if (m is not None and t is not None and opt is not None) else None
        pred_total += pred or 0.0
        rows.append(TensorRow(e.gguf_name, layer_of(e.gguf_name), e.type, e.bits_per_weight, e.n_params,
                              e.n_bytes, e.n_bytes / plan.total_bytes, pred, opt.kld if opt else None))
    cal = m.calibration.__dict__ if m is not None else {}
    return PlannerReport(tuple(rows), plan.total_bytes, plan.n_params, pred_total, dict(budget or {}),
                         method, dict(cal), evaluation, validation)
