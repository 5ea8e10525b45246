"""A plan packed into a GGUF file: every tensor through the Rust codecs, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aqrecipe._testhooks import reached
from aqrecipe.imatrix import ImatrixData
from aqrecipe.output.gguf import PlannedTensor, write_gguf
from aqrecipe.output.pack import pack_entry
from aqrecipe.plan import Plan, checked_source

if TYPE_CHECKING:
    from aqrecipe.calibration.hessians import HessianStore


def write_plan_gguf(plan: Plan, dest: Path, *, imatrix: ImatrixData | None = None,
                    hessians: HessianStore | None = None) -> None:
    """Pack and write every tensor of ``plan`` into ``dest`` (atomic); gptq entries read their
    input's Hessian from ``hessians`` (one at a time)."""
    source = checked_source(plan)
    entries = {e.gguf_name: e for e in plan.entries}
    absmean = plan.options.get("ternary_scale") == "absmean"
    planned = [PlannedTensor(e.gguf_name, e.hf_name, e.shape, e.type) for e in plan.entries]

    def produce(t: PlannedTensor):
        reached("pack")  # test-only kill point: the GGUF is partly written
        entry = entries[t.gguf_name]
        importance = imatrix.importance(entry.gguf_name) if imatrix is not None and entry.quantized else None
        hessian = hessians.get(entry.gguf_name) if hessians is not None and entry.rounding is not None else None
        return pack_entry(source, entry, importance, ternary_absmean=absmean, hessian=hessian)

    metadata = {"aqrecipe.version": plan.tool_version, "aqrecipe.plan_sha256": plan.sha256()}
    if plan.recipe_text is not None:
        metadata["aqrecipe.recipe"] = plan.recipe_text
    write_gguf(dest, source, planned, produce, metadata, plan.file_type)
