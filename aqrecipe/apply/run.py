"""``apply``: execute a plan: pack every tensor with the Rust codecs, write the GGUF, evaluate.

Stages run in order; each one only reads what the previous ones produced.
The output is written to a temporary file and renamed, so a failed run
leaves no partial output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from aqrecipe.apply.guard import check_destination, check_run_paths, locked_work_dir, staged_output
from aqrecipe.apply.hessian_stage import resolve_calibration
from aqrecipe.apply.imatrix_stage import calibration_spec
from aqrecipe.apply.options import ApplyOptions, ApplyResult, default_work_dir, wants_folder, write_report
from aqrecipe.apply.preflight import check_inputs
from aqrecipe.apply.safetensors import run_safetensors_apply
from aqrecipe.apply.smoothquant import run_smoothquant
from aqrecipe.apply.stages import replan, run_stages
from aqrecipe.calibration.memory import check_fits, peak_rss
from aqrecipe.errors import AqrecipeError
from aqrecipe.evaluate import evaluate
from aqrecipe.evaluate.coherence import CoherenceSpec, check_coherence, is_ultra_low
from aqrecipe.evaluate.reference import reference_gguf
from aqrecipe.models.files import check_tokenizer_files
from aqrecipe.plan.check import checked_source
from aqrecipe.plan.model import plan_source
from aqrecipe.optional import EXTRAS, require_or_skip
from aqrecipe.output.plan_gguf import write_plan_gguf
from aqrecipe.plan import Plan
from aqrecipe.plan.suggest import suggest_dynamic_recipe
from aqrecipe.recipe import EvaluationSpec, Recipe

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_apply(plan: Plan, recipe: Recipe | None, dest: Path, options: ApplyOptions = ApplyOptions()) -> ApplyResult:
    """Run the stages for a compiled plan and write ``dest`` (and the report).

    Stages: importance matrix -> pack + write (atomic) -> evaluate -> coherence check.
    Pre-flight, before any work folder exists: every input file the run reads, the
    output path, then ``--max-memory``. The whole run holds the work folder's lock (a
    second apply on it fails at once); the result and the report carry the peak RSS
    and the seconds of each stage.
    """
    t0 = time.perf_counter()
    dest = Path(dest)
    check_run_paths(plan, recipe, dest, options)  # no write may replace an input, another output or a device
    check_inputs(recipe, options)
    check_destination(dest, recipe, options)
    source = checked_source(plan)  # the model unchanged since compile, the plan describing it exactly
    if source.hf_folder is not None:  # a GGUF without a vocabulary would not load in llama.cpp: refuse it now
        check_tokenizer_files(source.hf_folder)
    if options.max_memory is not None:
        check_fits(source, options.max_memory)
    with locked_work_dir(options.work_dir or default_work_dir(dest)):
        result = _apply_locked(plan, recipe, dest, options)
    seconds = {**result.seconds, "total": time.perf_counter() - t0}
    result = replace(result, seconds=seconds, extra={**result.extra, **peak_rss()})
    if options.report_path is not None:
        write_report(result, options.report_path)
        result = replace(result, report_path=options.report_path)
    return result


def _apply_locked(plan: Plan, recipe: Recipe | None, dest: Path, options: ApplyOptions) -> ApplyResult:
    """The run under the work folder's lock: the output kind's own run, or imatrix -> stages -> pack -> checks."""
    if recipe is not None and recipe.section("smoothquant") is not None:
        return run_smoothquant_apply(plan, recipe, dest, options)
    if wants_folder(recipe, options):  # simulated quantization, exact super weights, HF folder
        return run_safetensors_apply(plan, recipe, dest, options)
    work_dir = options.work_dir or default_work_dir(dest)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    imatrix, hessians, calibration_report = resolve_calibration(
        plan, recipe, imatrix_path=options.imatrix_path, work_dir=work_dir, restart=options.restart, quiet=options.quiet,
        max_memory=options.max_memory,
    )
    seconds["imatrix"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outcome = run_stages(plan, recipe, imatrix, work_dir)
    if recipe is not None:
        plan = replan(recipe, options.extra_rules, outcome, plan)
    imatrix = outcome.imatrix
    seconds["stages"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log.info("packing %d tensors (%s, %.3f bpw) -> %s", len(plan.entries), plan.mixture or "custom", plan.bits_per_weight, dest)
    with staged_output(dest, work_dir) as staged:  # dest appears only once complete
        write_plan_gguf(plan, staged, imatrix=imatrix, hessians=hessians)
    seconds["pack_and_write"] = time.perf_counter() - t0

    extra: dict[str, Any] = {"imatrix": imatrix is not None, **outcome.report, **calibration_report}
    quality = check_written(plan, recipe, dest, options, seconds, extra)
    return ApplyResult(
        output=dest, plan=plan, output_bytes=dest.stat().st_size, seconds=seconds, quality=quality, extra=extra
    )


def check_written(plan: Plan, recipe: Recipe | None, dest: Path, options: ApplyOptions, seconds: dict[str, float],
                  extra: dict[str, Any]) -> dict[str, Any] | None:
    """Evaluate and coherence-check the GGUF now in place; the quality numbers, or None.

    Adds ``coherence`` and, where a check failed, ``evaluation_failed`` to ``extra``.
    """
    failures: list[dict[str, Any]] = []
    quality = None
    if options.evaluates(recipe):
        t0 = time.perf_counter()
        eval_spec = recipe.evaluation if recipe is not None else None
        quality = check_output("evaluation", failures, evaluate_output, plan, dest, eval_spec, recipe)
        seconds["evaluate"] = time.perf_counter() - t0
    coherence = check_output("coherence check", failures, run_coherence, plan, recipe, dest)
    if coherence is not None:
        extra["coherence"] = coherence
    if failures:
        extra["evaluation_failed"] = failures
    return quality


def run_smoothquant_apply(plan: Plan, recipe: Recipe, dest: Path, options: ApplyOptions) -> ApplyResult:
    """W8A8 recipes: smooth, then write compressed-tensors (a folder) or a Q8_0 GGUF per the section.

    Calibration data come from ``imatrix.calibration`` when the recipe has it, else the defaults.
    """
    t0 = time.perf_counter()
    imatrix_section = recipe.section("imatrix")
    spec = calibration_spec(getattr(imatrix_section, "calibration", None), recipe)  # type: file has none
    ev = recipe.evaluation
    do_eval = options.evaluates(recipe)
    result = run_smoothquant(
        recipe.section("smoothquant"),
        plan.model_path,
        spec,
        (options.work_dir or default_work_dir(dest)) / "smoothquant",
        output=dest,
        evaluate=do_eval,
        eval_chunks=ev.chunks,
        eval_context=ev.context,
        eval_text=recipe.resolve_path(ev.text) if ev.text else None,
        quiet=options.quiet,
    )
    data = result.to_dict()
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) if dest.is_dir() else (
        dest.stat().st_size if dest.exists() else 0)
    return ApplyResult(output=dest, plan=plan, output_bytes=size, seconds={"smoothquant": time.perf_counter() - t0},
                       quality=data.get("quality"), extra={"smoothquant": data})


def check_output(stage: str, failures: list[dict[str, Any]], check: Callable[..., T], *args: Any) -> T | None:
    """Run ``check(*args)`` on the written output; its error is recorded in ``failures``, not raised.

    The output is complete and in place by now, so a failed evaluation (a llama.cpp
    crash included) must not lose it: the run goes on to write its report, the
    summary says what failed, and the CLI's exit code says so.
    """
    try:
        return check(*args)
    except AqrecipeError as exc:
        log.error("%s failed: %s", stage, exc.message)
        failures.append({"stage": stage, "code": exc.code, "error": type(exc).__name__, "message": exc.message,
                         "hint": exc.hint, "exit_code": exc.exit_code})
        return None


def run_coherence(plan: Plan, recipe: Recipe | None, dest: Path) -> dict[str, Any] | None:
    """Collapse detection (on by default for ultra-low-bit plans); warns with a suggested recipe.

    The automatic check is skipped with a warning when llama-cpp-python is missing;
    one the recipe asks for (``coherence.enabled: true``) needs it.
    """
    spec = (recipe.section("coherence") if recipe is not None else None) or CoherenceSpec()
    enabled = spec.enabled if spec.enabled is not None else is_ultra_low(plan)
    if not enabled:
        return None
    if spec.enabled is None:  # automatic: skipped, with a warning, where an extra is missing
        for module in ("llama_cpp", "gensim"):
            if require_or_skip(module, "the automatic coherence check of this ultra-low-bit file") is None:
                return {"skipped": f"{EXTRAS[module][0]} is not installed", "passed": None, "strict": spec.strict}
    verdict = check_coherence(dest, reference_gguf(plan_source(plan)), spec)
    data = {**verdict.to_dict(), "strict": spec.strict}
    if not verdict.passed:
        suggestion = suggest_dynamic_recipe(plan, recipe)
        data["suggested_recipe"] = suggestion
        log.warning(
            "the quantized model looks collapsed: %s. A dynamic recipe of about the same size keeps the "
            "sensitive tensors at more bits:\n%s",
            "; ".join(verdict.failures),
            suggestion,
        )
    return data


def evaluate_output(plan: Plan, dest: Path, eval_spec: EvaluationSpec | None, recipe: Recipe | None) -> dict[str, Any]:
    """Quality of the written GGUF against the unquantized model (F16 GGUF reference in llama.cpp)."""
    reference = reference_gguf(plan_source(plan))
    text = None
    if eval_spec is not None and eval_spec.text:
        text = recipe.resolve_path(eval_spec.text) if recipe is not None else Path(eval_spec.text)
    report = evaluate(
        dest,
        reference=reference,
        text=text,
        chunks=eval_spec.chunks if eval_spec else 16,
        context=eval_spec.context if eval_spec else 512,
    )
    return report.to_dict()



