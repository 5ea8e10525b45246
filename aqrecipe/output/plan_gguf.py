"""A plan packed into a GGUF file: every tensor through the Rust codecs, written atomically."""

from __future__ import annotations

from pathlib import Path

from aqrecipe._testhooks import reached
from aqrecipe.imatrix import ImatrixData
from aqrecipe.output.gguf import PlannedTensor, write_gguf
from aqrecipe.output.pack import pack_entry
from aqrecipe.plan import Plan, checked_source


def write_plan_gguf(plan: Plan, dest: Path, *, imatrix: ImatrixData | None = None) -> None:
    """Pack and write every tensor of ``plan`` into ``dest`` (atomic)."""
    source = checked_source(plan)
    entries = {e.gguf_name: e for e in plan.entries}
    absmean = plan.options.get("ternary_scale") == "absmean"
    planned = [PlannedTensor(e.gguf_name, e.hf_name, e.shape, e.type) for e in plan.entries]

    def produce(t: PlannedTensor):
        reached("pack")  # test-only kill point: the GGUF is partly written
        entry = entries[t.gguf_name]
        importance = imatrix.importance(entry.gguf_name) if imatrix is not None and entry.quantized else None
        return pack_entry(source, entry, importance, ternary_absmean=absmean)

    metadata = {"aqrecipe.version": plan.tool_version, "aqrecipe.plan_sha256": plan.sha256()}
    if plan.recipe_text is not None:
        metadata["aqrecipe.recipe"] = plan.recipe_text
    write_gguf(dest, source, planned, produce, metadata, plan.file_type)
