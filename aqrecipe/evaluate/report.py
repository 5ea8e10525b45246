"""The quality report: frozen data, JSON form and a plain-text table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["QualityReport", "format_report_table"]


@dataclass(frozen=True)
class QualityReport:
    """Quality of ``model`` measured on held-out text, optionally against ``reference``.

    Perplexities score the second half of each ``context``-token window (as
    llama.cpp's perplexity tool does); ``n_tokens`` counts the scored tokens.
    The KL divergence is KL(P_reference || P_model) per scored token, in nats.
    Fields that need a reference are None without one.
    """

    model: str
    reference: str | None
    text_source: str
    n_tokens: int
    chunks: int
    context: int
    perplexity_quantized: float
    perplexity_original: float | None = None
    kld_mean: float | None = None
    kld_p99: float | None = None
    kld_max: float | None = None
    top1_agreement: float | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        return cls(**data)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report_table(report: QualityReport) -> str:
    """A short aligned table for terminals and Markdown-free logs."""
    rows: list[tuple[str, str]] = [
        ("model", report.model),
        ("reference", report.reference or "-"),
        ("text", report.text_source),
        ("scored tokens", f"{report.n_tokens} ({report.chunks} x {report.context}, second halves)"),
        ("perplexity (model)", _fmt(report.perplexity_quantized, ".4f")),
        ("perplexity (reference)", _fmt(report.perplexity_original, ".4f")),
    ]
    if report.perplexity_original:
        ratio = report.perplexity_quantized / report.perplexity_original
        rows.append(("perplexity ratio", f"{ratio:.4f}"))
    rows += [
        ("KL divergence mean", _fmt(report.kld_mean, ".6f")),
        ("KL divergence p99", _fmt(report.kld_p99, ".6f")),
        ("KL divergence max", _fmt(report.kld_max, ".6f")),
        ("top-1 agreement", "-" if report.top1_agreement is None else f"{report.top1_agreement:.2%}"),
    ]
    if report.timing:
        rows.append(("time", ", ".join(f"{k} {v:.1f}s" for k, v in sorted(report.timing.items()))))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
