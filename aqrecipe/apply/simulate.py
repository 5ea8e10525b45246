"""Simulated quantization: the weights a plan's GGUF would hold, dequantized, in HF layout.

Quantize-dequantize happens on the HF tensors themselves, row by row, with the type and imatrix
row of the GGUF tensor each one feeds. That is the GGUF's own result: every ggml block type
quantizes a row on its own (blocks lie within a row; the imatrix weighs columns), and what the
converter does to the tensors of the families the torch stages run (the q/k rope permutation,
fused qkv / gate_up) moves whole rows. So no transform is undone here: llama.cpp's converter is
the only place that knows them (tests/test_simulate.py checks the claim against the packed GGUF).
When super-weight protection is on, the exact original values are written back
(:func:`restore_super_weights`): a stored (index, value) pair each, :data:`RESTORE_ENTRY_BYTES` bytes.

Consumers: evaluation in torch (:func:`simulated_backend`, ``aqrecipe eval RECIPE
--simulate``) and the safetensors output (:mod:`aqrecipe.output.safetensors`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from aqrecipe.errors import PlanError
from aqrecipe.plan import checked_source

if TYPE_CHECKING:
    import argparse

    from aqrecipe.evaluate.backends import LogitsBackend
    from aqrecipe.evaluate.report import QualityReport
    from aqrecipe.imatrix import ImatrixData
    from aqrecipe.imatrix.protocol import Importance
    from aqrecipe.importance import SuperWeight
    from aqrecipe.models.protocol import WeightSource
    from aqrecipe.plan import Plan, PlanEntry, Rule
    from aqrecipe.recipe import Recipe

log = logging.getLogger(__name__)

#: bytes one restored super weight costs: a uint32 flat index + a float32 value
RESTORE_ENTRY_BYTES = 8
#: The stage named when the model has no HF folder (GGUF input).
SIMULATION = "simulated evaluation"


def round_trip_rows(w: np.ndarray, type_name: str, importance: np.ndarray | None, *, ternary_absmean: bool,
                    name: str) -> np.ndarray:
    """``w`` (HF orientation) quantized and dequantized row by row with ``type_name``; F32 as is."""
    from aqrecipe.errors import CodecError
    from aqrecipe.quant import codecs

    w = np.asarray(w, dtype=np.float32)
    if type_name == "F32" or w.ndim < 2:  # norms and biases are stored as they are
        return w
    rows = w.reshape(-1, w.shape[-1])
    try:
        packed = codecs.quantize(rows, type_name, importance, ternary_absmean=ternary_absmean)
    except CodecError as exc:  # say which tensor; the rows are the checkpoint's own
        raise type(exc)(f"tensor {name}: {exc.message}", hint=exc.hint, code=exc.code) from None
    return codecs.dequantize(packed, type_name, rows.shape).reshape(w.shape)


def feeding_entries(plan: Plan, source: WeightSource) -> dict[str, list[PlanEntry]]:
    """HF tensor name -> the plan entries (GGUF tensors) it feeds, for every HF tensor of the model."""
    from aqrecipe.calibration.hf_model import hf_tensor_shapes

    by_gguf = {e.gguf_name: e for e in plan.entries}
    return {hf: [by_gguf[g] for g in source.gguf_names_of(hf) if g in by_gguf]
            for hf in sorted(hf_tensor_shapes(source))}


def _one_type(hf_name: str, entries: Sequence[PlanEntry]) -> PlanEntry | None:
    """The entry whose type an HF tensor is simulated with (None: it feeds no GGUF tensor)."""
    types = sorted({e.type for e in entries})
    if len(types) > 1:
        raise PlanError(
            f"{hf_name} feeds GGUF tensors of different types ({', '.join(f'{e.gguf_name} {e.type}' for e in entries)}): "
            "simulated quantization quantizes the HF tensor, so they need one type",
            hint="give those GGUF tensors the same type (one rule matching all of them)")
    return entries[0] if entries else None


def simulated_hf_tensor(source: WeightSource, hf_name: str, entries: Sequence[PlanEntry],
                        importance: np.ndarray | None = None, *, ternary_absmean: bool = False,
                        super_weights: Iterable[SuperWeight] = ()) -> np.ndarray:
    """One HF tensor as the GGUF tensors it feeds hold it, dequantized, super weights restored.

    ``importance`` is the imatrix row of the entry it is quantized as (those entries share its input).
    """
    from aqrecipe.importance import restore_super_weights

    entry = _one_type(hf_name, entries)
    w = np.asarray(source.read(hf_name), dtype=np.float32)
    if entry is not None:
        if w.ndim >= 2 and w.shape[-1] != entry.shape[-1]:
            raise PlanError(f"{hf_name} has rows of {w.shape[-1]} values but {entry.gguf_name} of {entry.shape[-1]}",
                            hint="simulated quantization needs GGUF rows that are the HF tensor's rows")
        w = round_trip_rows(w, entry.type, importance, ternary_absmean=ternary_absmean, name=hf_name)
    mine = [sw for sw in super_weights if sw.hf_name == hf_name]
    return restore_super_weights({hf_name: w}, mine)[hf_name] if mine else w


def simulated_tensor(source: WeightSource, entry: PlanEntry, importance: np.ndarray | None = None, *,
                     ternary_absmean: bool = False, super_weights: Iterable[SuperWeight] = ()) -> np.ndarray:
    """``entry``'s HF tensor (``entry.hf_name``) simulated with ``entry``'s type, HF orientation."""
    return simulated_hf_tensor(source, entry.hf_name, [entry], importance, ternary_absmean=ternary_absmean,
                               super_weights=super_weights)


def simulated_tensors(plan: Plan, *, imatrix: Importance | None = None, super_weights: Iterable[SuperWeight] = (),
                      source: WeightSource | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(HF name, float32 weights)`` for every HF tensor of the plan's model, one at a time, by name.

    A tensor that feeds no GGUF tensor (the converter drops it) keeps its values.
    """
    from aqrecipe.calibration.hf_model import require_hf_folder

    source = source or checked_source(plan)
    require_hf_folder(source, SIMULATION)
    absmean = plan.options.get("ternary_scale") == "absmean"
    sws = list(super_weights)
    for hf_name, entries in feeding_entries(plan, source).items():
        entry = _one_type(hf_name, entries)
        imp = imatrix.importance(entry.gguf_name) if imatrix is not None and entry is not None and entry.quantized \
            else None
        yield hf_name, simulated_hf_tensor(source, hf_name, entries, imp, ternary_absmean=absmean, super_weights=sws)


@dataclass(frozen=True)
class Prepared:
    """A plan after apply's rule-producing stages, with the imatrix and the values to restore."""

    plan: Plan
    imatrix: ImatrixData | None = None
    restore: tuple[SuperWeight, ...] = ()
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def restore_bytes(self) -> int:
        """What storing the restored values costs (count x (index + value))."""
        return len(self.restore) * RESTORE_ENTRY_BYTES

    def summary(self) -> dict[str, Any]:
        """Sizes of the simulated model: the plan's quantized bytes plus the restored values."""
        n = self.plan.n_params
        total = self.plan.total_bytes + self.restore_bytes
        return {"quantized_bytes": self.plan.total_bytes, "restored_values": len(self.restore),
                "restore_bytes": self.restore_bytes, "total_bytes": total,
                "bits_per_weight": round(8 * total / n, 4) if n else 0.0,
                "restored": [sw.to_dict() for sw in self.restore]}


def prepare(plan: Plan, recipe: Recipe | None, work_dir: Path, *, imatrix_path: Path | None = None,
            restart: bool = False, quiet: bool = False, extra_rules: Sequence[Rule] = (),
            max_memory: int | None = None) -> Prepared:
    """Run apply's stages before packing: imatrix, super-weight protection, planner; replan."""
    from aqrecipe.apply.imatrix_stage import resolve_imatrix
    from aqrecipe.apply.stages import replan, run_stages

    imatrix = resolve_imatrix(plan, recipe, imatrix_path=imatrix_path, work_dir=work_dir, restart=restart,
                              quiet=quiet, max_memory=max_memory)
    outcome = run_stages(plan, recipe, imatrix, work_dir)
    if recipe is not None:
        plan = replan(recipe, extra_rules, outcome, plan)
    return Prepared(plan, outcome.imatrix, tuple(outcome.restore), dict(outcome.report))


def simulated_backend(prepared: Prepared, *, n_threads: int | None = None) -> Any:
    """A :class:`~aqrecipe.evaluate.TorchBackend` (float32, CPU) holding the simulated weights."""
    from aqrecipe.evaluate.torch_backend import TorchBackend

    from aqrecipe.calibration.hf_model import require_hf_folder

    source = checked_source(prepared.plan)
    backend = TorchBackend(require_hf_folder(source, SIMULATION), n_threads=n_threads)
    weights = simulated_tensors(prepared.plan, imatrix=prepared.imatrix, super_weights=prepared.restore,
                                source=source)
    names = backend.parameter_names()  # a checkpoint may hold what the model does not load
    backend.load_weights(((n, w) for n, w in weights if n in names),
                         name=f"{prepared.plan.model} (simulated {prepared.plan.mixture or 'custom'}, "
                              f"{8 * prepared.summary()['total_bytes'] / max(prepared.plan.n_params, 1):.3f} bpw)")
    return backend


def default_simulate_work_dir(target: Path) -> Path:
    """Checkpoints of ``eval --simulate`` live beside the recipe, like apply's beside its output."""
    return target.parent / ".aqrecipe-work" / f"{target.stem}-simulate"


def evaluate_simulated(target: Path, *, reference: LogitsBackend | None = None, text: Path | None = None,
                       chunks: int = 16, context: int = 512, imatrix_path: Path | None = None,
                       work_dir: Path | None = None,
                       restart: bool = False, quiet: bool = False, extra_rules: Sequence[Rule] = (),
                       n_threads: int | None = None) -> tuple[QualityReport, dict[str, Any]]:
    """Quality of a recipe's (or plan's) simulated quantization against the original model in torch.

    Returns ``(QualityReport, summary)``; the summary holds the simulated sizes and the stages' report.
    ``reference`` defaults to the unquantized model (float32 in torch).
    """
    from aqrecipe.plan.from_recipe import load_target
    from aqrecipe.evaluate import evaluate
    from aqrecipe.evaluate.torch_backend import TorchBackend

    plan, recipe = load_target(target, extra_rules=extra_rules)
    prepared = prepare(plan, recipe, work_dir or default_simulate_work_dir(target), imatrix_path=imatrix_path,
                       restart=restart, quiet=quiet, extra_rules=extra_rules)
    model = simulated_backend(prepared, n_threads=n_threads)
    ref = reference if reference is not None else TorchBackend(prepared.plan.model_path, n_threads=n_threads)
    report = evaluate(model, reference=ref, text=text, chunks=chunks, context=context, n_threads=n_threads)
    log.info("simulated %s: %d restored value(s), %.4f bpw", target, len(prepared.restore),
             prepared.summary()["bits_per_weight"])
    return report, {**prepared.summary(), **prepared.report}


def eval_command(args: argparse.Namespace, extra_rules: Sequence[Rule] = ()) -> tuple[dict[str, Any], str]:
    """``aqrecipe eval TARGET --simulate``: the JSON document and the text the CLI prints."""
    from aqrecipe.evaluate import format_report_table

    report, summary = evaluate_simulated(
        Path(args.model), reference=args.reference, text=Path(args.text) if args.text else None,
        chunks=args.chunks, context=args.context, imatrix_path=Path(args.imatrix) if args.imatrix else None,
        work_dir=Path(args.work_dir) if args.work_dir else None, restart=args.restart,
        quiet=args.quiet or args.json, extra_rules=extra_rules)
    sizes = (f"simulated: {summary['quantized_bytes']:,} quantized bytes + {summary['restore_bytes']} bytes for "
             f"{summary['restored_values']} restored super weight(s) = {summary['bits_per_weight']:.4f} bpw")
    return {**report.to_dict(), "simulated": summary}, format_report_table(report) + "\n" + sizes
