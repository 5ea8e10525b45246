"""``apply``: execute a plan: pack every tensor with the Rust codecs, write the GGUF, evaluate.

Stages run in order; each one only reads what the previous ones produced.
The output is written to a temporary file and renamed, so a failed run
leaves no partial output.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ._testhooks import reached
from .errors import AqrecipeError, PlanError
from .fileio import atomic_write_text
from .optional import EXTRAS, require_or_skip
from .plan import Plan, PlanSpec, Rule, compile_plan, load_plan
from .recipe import Recipe, load_recipe

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ApplyResult:
    """What an apply produced: the output file, its plan and the quality numbers."""

    output: Path
    plan: Plan
    output_bytes: int
    seconds: dict[str, float]
    quality: dict[str, Any] | None = None
    report_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "output_bytes": self.output_bytes,
            "plan_sha256": self.plan.sha256(),
            "bits_per_weight": round(self.plan.bits_per_weight, 4),
            "compression_ratio_vs_f16": round(self.plan.compression_ratio, 4),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "quality": self.quality,
            "report": str(self.report_path) if self.report_path else None,
            **self.extra,
        }


def recipe_rules(recipe: Recipe) -> list[Rule]:
    """The recipe's tensor rules as plan rules (origin names the list index)."""
    return [
        Rule(pattern=r.match_text, type=r.type, kind=r.kind, origin=f"rules[{r.index}]")
        for r in recipe.quantization.rules
    ]


def plan_from_recipe(recipe: Recipe, *, extra_rules: Sequence[Rule] = (), model_override: str | None = None) -> Plan:
    """Open the recipe's model (headers only) and compile the plan.

    CLI rules (``--set``) come before the recipe's, so they win within a kind.
    """
    from .models import open_model

    model_ref = model_override or recipe.model
    base_dir = recipe.source_path.parent if recipe.source_path else None
    source = open_model(model_ref, base_dir=base_dir)
    spec = PlanSpec(
        mixture=recipe.quantization.mixture,
        default=recipe.quantization.default,
        rules=tuple(extra_rules) + tuple(recipe_rules(recipe)),
    )
    return compile_plan(
        source,
        spec,
        model_ref=model_ref,
        recipe_text=recipe.source_text,
        recipe_path=str(recipe.source_path) if recipe.source_path else None,
        options={"ternary_scale": recipe.quantization.ternary_scale},
    )


def load_target(target: Path, *, extra_rules: Sequence[Rule] = ()) -> tuple[Plan, Recipe | None]:
    """A recipe (.yaml/.yml) is compiled; a plan (.json) is read as it is."""
    if target.suffix == ".json":
        if extra_rules:
            raise PlanError("--set cannot change a compiled plan", hint="pass the recipe instead, or recompile")
        plan = load_plan(target)
        recipe = None
        if plan.recipe_text is not None:
            from .recipe import parse_recipe

            recipe = parse_recipe(plan.recipe_text, source_path=Path(plan.recipe_path) if plan.recipe_path else None)
        return plan, recipe
    recipe = load_recipe(target)
    return plan_from_recipe(recipe, extra_rules=extra_rules), recipe


def write_plan_gguf(plan: Plan, dest: Path, *, imatrix: Any = None) -> None:
    """Pack and write every tensor of ``plan`` into ``dest`` (atomic)."""
    from .gguf_out import PlannedTensor, write_gguf
    from .models import open_model
    from .pack import pack_entry

    source = open_model(plan.model_path)
    if source.fingerprint() != plan.model_fingerprint:
        raise PlanError(
            f"the model at {plan.model_path} changed since the plan was compiled",
            hint="recompile the recipe (aqrecipe compile) and apply the new plan",
        )
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


@dataclass(frozen=True)
class ApplyOptions:
    """Run-time choices of one apply (never part of the plan)."""

    evaluate: bool | None = None  # None: as the recipe says
    report_path: Path | None = None
    imatrix_path: Path | None = None  # --imatrix: beats the recipe's imatrix section
    work_dir: Path | None = None  # layer checkpoints; default beside the output
    restart: bool = False  # discard checkpoints of an earlier run
    quiet: bool = False
    extra_rules: tuple[Rule, ...] = ()  # --set rules, re-applied when the stages replan
    output_format: str | None = None  # None: the recipe's output.format; "safetensors" for -o DIR/
    max_memory: int | None = None  # --max-memory bytes: sizes the calibration cache, refuses a model that cannot fit

    def evaluates(self, recipe: Recipe | None) -> bool:
        """Whether this run evaluates its output: ``--eval``/``--no-eval``, else the recipe's evaluation section."""
        if self.evaluate is not None:
            return self.evaluate
        return bool(recipe is not None and recipe.evaluation.enabled)


def default_work_dir(dest: Path) -> Path:
    """Checkpoints live beside the output so a rerun of the same command resumes."""
    return dest.parent / ".aqrecipe-work" / dest.name


def run_apply(plan: Plan, recipe: Recipe | None, dest: Path, options: ApplyOptions = ApplyOptions()) -> ApplyResult:
    """Run the stages for a compiled plan and write ``dest`` (and the report).

    Stages: importance matrix -> pack + write (atomic) -> evaluate -> coherence check.
    Pre-flight, before any work folder exists: every input file the run reads, then
    the output path. The whole run holds the work folder's lock (a second apply on it
    fails at once); the result and the report carry the peak RSS and the seconds of each stage.
    """
    from .preflight import check_inputs
    from .runguard import guarded_apply

    check_inputs(recipe, options)
    return guarded_apply(_apply_locked, plan, recipe, dest, options)


def _apply_locked(plan: Plan, recipe: Recipe | None, dest: Path, options: ApplyOptions) -> ApplyResult:
    from .imatrix_stage import resolve_imatrix
    from .runguard import staged_output
    from .stages import replan, run_stages

    if recipe is not None and recipe.stage("smoothquant") is not None:
        return run_smoothquant_apply(plan, recipe, dest, options)
    from .safetensors_out import run_safetensors_apply, wants_folder

    if wants_folder(recipe, options):  # simulated quantization, exact super weights, HF folder
        return run_safetensors_apply(plan, recipe, dest, options)
    work_dir = options.work_dir or default_work_dir(dest)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    imatrix = resolve_imatrix(
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
        write_plan_gguf(plan, staged, imatrix=imatrix)
    seconds["pack_and_write"] = time.perf_counter() - t0

    quality = None
    eval_spec = recipe.evaluation if recipe is not None else None
    extra: dict[str, Any] = {"imatrix": imatrix is not None, **outcome.report}
    failures: list[dict[str, Any]] = []
    if options.evaluates(recipe):
        t1 = time.perf_counter()
        quality = check_output("evaluation", failures, evaluate_output, plan, dest, eval_spec, recipe)
        seconds["evaluate"] = time.perf_counter() - t1
    coherence = check_output("coherence check", failures, run_coherence, plan, recipe, dest)
    if coherence is not None:
        extra["coherence"] = coherence
    if failures:
        extra["evaluation_failed"] = failures
    return ApplyResult(
        output=dest, plan=plan, output_bytes=dest.stat().st_size, seconds=seconds, quality=quality, extra=extra
    )


def run_smoothquant_apply(plan: Plan, recipe: Recipe, dest: Path, options: ApplyOptions) -> ApplyResult:
    """W8A8 recipes: smooth, then write compressed-tensors (a folder) or a Q8_0 GGUF per the section.

    Calibration data come from ``imatrix.calibration`` when the recipe has it, else the defaults.
    """
    from .imatrix_stage import calibration_spec
    from .smoothquant import run_smoothquant

    t0 = time.perf_counter()
    imatrix_section = recipe.stage("imatrix") or {}
    spec = calibration_spec(imatrix_section.get("calibration"), recipe)
    ev = recipe.evaluation
    do_eval = options.evaluates(recipe)
    result = run_smoothquant(
        recipe.stage("smoothquant"),
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
    from .coherence import CoherenceSpec, check_coherence, is_ultra_low
    from .reference import reference_gguf

    spec = CoherenceSpec.from_dict(recipe.stage("coherence") if recipe is not None else None)
    enabled = spec.enabled if spec.enabled is not None else is_ultra_low(plan)
    if not enabled:
        return None
    if spec.enabled is None:  # automatic: skipped, with a warning, where an extra is missing
        for module in ("llama_cpp", "gensim"):
            if require_or_skip(module, "the automatic coherence check of this ultra-low-bit file") is None:
                return {"skipped": f"{EXTRAS[module][0]} is not installed", "passed": None, "strict": spec.strict}
    verdict = check_coherence(dest, reference_gguf(plan.model_path), spec)
    data = {**verdict.to_dict(), "strict": spec.strict}
    if not verdict.passed:
        from .suggest import suggest_dynamic_recipe

        suggestion = suggest_dynamic_recipe(plan, recipe)
        data["suggested_recipe"] = suggestion
        log.warning(
            "the quantized model looks collapsed: %s. A dynamic recipe of about the same size keeps the "
            "sensitive tensors at more bits:\n%s",
            "; ".join(verdict.failures),
            suggestion,
        )
    return data


def evaluate_output(plan: Plan, dest: Path, eval_spec: Any, recipe: Recipe | None) -> dict[str, Any]:
    """Quality of the written GGUF against the unquantized model (F16 GGUF reference in llama.cpp)."""
    from .evaluate import evaluate
    from .reference import reference_gguf

    reference = reference_gguf(plan.model_path)
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


def write_report(result: ApplyResult, path: Path) -> None:
    """The run's JSON report: output, plan totals, per-tensor types and quality (atomic)."""
    data = result.to_dict()
    data["plan"] = result.plan.to_dict()
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
