"""Human-readable rendering of a plan (``aqrecipe compile`` without ``--json``)."""

from __future__ import annotations

from collections import Counter

from aqrecipe.plan.model import Plan
from aqrecipe.plan.rules import NO_MATCH, split_unused_entry


def human_bytes(n: float) -> str:
    """1536 -> '1.50 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render_plan(plan: Plan, *, verbose: bool = True) -> str:
    """The per-tensor table (when ``verbose``), type summary, fallbacks and totals."""
    lines: list[str] = []
    if verbose:
        header = ("gguf name", "hf name", "shape", "type", "bytes", "bpw", "chosen by")
        rows = [
            (
                e.gguf_name,
                e.hf_name,
                "x".join(map(str, e.shape)),
                e.type,
                str(e.n_bytes),
                f"{e.bits_per_weight:.4g}",
                e.chosen_by,
            )
            for e in plan.entries
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for r in [header, *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        lines.append("")
    by_type: Counter[str] = Counter()
    params_by_type: Counter[str] = Counter()
    for e in plan.entries:
        by_type[e.type] += e.n_bytes
        params_by_type[e.type] += e.n_params
    lines.append("types:")
    for t, nbytes in sorted(by_type.items(), key=lambda kv: -kv[1]):
        share = 100.0 * nbytes / plan.total_bytes if plan.total_bytes else 0.0
        lines.append(f"  {t:<8} {params_by_type[t]:>14,} params  {human_bytes(nbytes):>12}  {share:5.1f}%")
    if plan.fallbacks:
        lines.append(f"fallbacks ({len(plan.fallbacks)} tensors whose rows do not fit the requested blocks):")
        pairs = Counter((e.requested_type, e.type, e.shape[-1]) for e in plan.fallbacks)
        for (req, got, row), n in sorted(pairs.items()):
            lines.append(f"  {n:4d} x {req} -> {got} (row length {row})")
    not_ternary = [e for e in plan.fallbacks if e.requested_type in ("TQ1_0", "TQ2_0")]
    if not_ternary:
        lines.append(
            f"not ternary: {len(not_ternary)} tensors whose rows are not a multiple of 256 weights "
            f"(e.g. {not_ternary[0].gguf_name}, row length {not_ternary[0].shape[-1]}) use {not_ternary[0].type}"
        )
    for entry in plan.unused_rules:
        head, reason = split_unused_entry(entry)
        lines.append(f"warning: rule {reason}: {head}" if reason == NO_MATCH
                     else f"warning: rule chooses no tensor: {head} ({reason})")
    if plan.needs_imatrix:
        lines.append(f"note: {len(plan.needs_imatrix)} tensors use types that need an importance matrix")
    lines.append(
        f"total: {plan.n_params:,} params, {human_bytes(plan.total_bytes)} "
        f"({plan.bits_per_weight:.3f} bpw), F16 {human_bytes(plan.f16_bytes)}, "
        f"compression {plan.compression_ratio:.2f}x"
    )
    return "\n".join(lines)
