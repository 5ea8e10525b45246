"""apply with a safetensors folder output: the simulated quantization as an HF folder, evaluated in torch."""

from __future__ import annotations

import time
from pathlib import Path

from aqrecipe.apply.options import ApplyOptions, ApplyResult, default_work_dir
from aqrecipe.apply.simulate import prepare, simulated_tensors
from aqrecipe.evaluate import evaluate
from aqrecipe.output.safetensors import write_hf_folder
from aqrecipe.plan import Plan, checked_source
from aqrecipe.recipe import Recipe


def run_safetensors_apply(plan: Plan, recipe: Recipe | None, dest: Path, options: ApplyOptions) -> ApplyResult:
    """apply for ``output.format: safetensors``: stages, simulated weights -> HF folder, torch evaluation.

    Called by :func:`aqrecipe.apply.run.run_apply`, which checks the destination before any
    work and writes the report afterwards.
    """
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = prepare(plan, recipe, options.work_dir or default_work_dir(dest), imatrix_path=options.imatrix_path,
                       restart=options.restart, quiet=options.quiet, extra_rules=options.extra_rules,
                       max_memory=options.max_memory)
    seconds["stages"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    source = checked_source(prepared.plan)
    meta = {"aqrecipe.plan_sha256": prepared.plan.sha256(), "aqrecipe.version": prepared.plan.tool_version}
    if prepared.plan.recipe_text is not None:
        meta["aqrecipe.recipe"] = prepared.plan.recipe_text
    tensors = simulated_tensors(prepared.plan, imatrix=prepared.imatrix, super_weights=prepared.restore, source=source)
    write_hf_folder(dest, prepared.plan, source, tensors, dtype=recipe.output.dtype if recipe is not None else "auto",
                    metadata=meta)
    seconds["simulate_and_write"] = time.perf_counter() - t0
    quality = None
    ev = recipe.evaluation if recipe is not None else None
    if options.evaluates(recipe):
        t0 = time.perf_counter()
        text = recipe.resolve_path(ev.text) if ev is not None and ev.text else None
        quality = evaluate(dest, reference=source.path, text=text, chunks=ev.chunks if ev else 16,
                           context=ev.context if ev else 512).to_dict()
        seconds["evaluate"] = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in Path(dest).rglob("*") if f.is_file())
    extra = {"imatrix": prepared.imatrix is not None, "format": "safetensors", "simulated": prepared.summary(),
             **prepared.report}
    return ApplyResult(output=Path(dest), plan=prepared.plan, output_bytes=size, seconds=seconds, quality=quality,
                       extra=extra)
