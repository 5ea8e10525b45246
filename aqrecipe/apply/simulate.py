"""Simulated quantization: the weights a plan's GGUF would hold, dequantized, in HF layout.

Each tensor takes the packer's own path (:func:`aqrecipe.output.pack.pack_entry`: llama.cpp's
layout transforms, the imatrix row as importance, the ternary scale option), so the
simulated weights equal the dequantized bytes of the GGUF file bit for bit. Then the
q/k rope permutation is undone (HF orientation again) and, when super-weight protection
is on, the exact original values are written back (:func:`restore_super_weights`):
a stored (index, value) pair each, :data:`RESTORE_ENTRY_BYTES` bytes.

Consumers: evaluation in torch (:func:`simulated_backend`, ``aqrecipe eval RECIPE
--simulate``) and the safetensors output (:mod:`aqrecipe.output.safetensors`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from aqrecipe.plan import checked_source

if TYPE_CHECKING:
    import argparse

    from aqrecipe.evaluate.backends import LogitsBackend
    from aqrecipe.evaluate.report import QualityReport
    from aqrecipe.imatrix import ImatrixData
    from aqrecipe.imatrix.protocol import Importance
    from aqrecipe.importance import SuperWeight
    from aqrecipe.models import ModelSource
    from aqrecipe.plan import Plan, PlanEntry, Rule
    from aqrecipe.recipe import Recipe

log = logging.getLogger(__name__)

#: bytes one restored super weight costs: a uint32 flat index + a float32 value
RESTORE_ENTRY_BYTES = 8


def simulated_tensor(source: ModelSource, entry: PlanEntry, importance: np.ndarray | None = None, *,
                     ternary_absmean: bool = False, super_weights: Iterable[SuperWeight] = ()) -> np.ndarray:
    """One tensor as the GGUF holds it, dequantized to float32, HF orientation, super weights restored."""
    from aqrecipe.quant import codecs
    from aqrecipe.importance import restore_super_weights
    from aqrecipe.models.tensor_names import to_hf_layout
    from aqrecipe.output.pack import pack_entry

    if entry.type == "F32":
        w = np.asarray(source.read(entry.hf_name), dtype=np.float32)
    else:
        packed = pack_entry(source, entry, importance, ternary_absmean=ternary_absmean)
        rows = (int(np.prod(entry.shape[:-1])), entry.shape[-1])
        w = to_hf_layout(source.arch, entry.gguf_name, codecs.dequantize(packed, entry.type, rows).reshape(entry.shape))
    mine = [sw for sw in super_weights if entry.gguf_name == sw.tensor or entry.hf_name == sw.hf_name]
    return restore_super_weights({entry.hf_name: w}, mine)[entry.hf_name] if mine else w


def simulated_tensors(plan: Plan, *, imatrix: Importance | None = None, super_weights: Iterable[SuperWeight] = (),
                      source: ModelSource | None = None) -> Iterator[tuple[PlanEntry, np.ndarray]]:
    """``(entry, float32 weights)`` for every tensor of ``plan``, one at a time, in plan order."""
    source = source or checked_source(plan)
    absmean = plan.options.get("ternary_scale") == "absmean"
    sws = list(super_weights)
    for entry in plan.entries:
        imp = imatrix.importance(entry.gguf_name) if imatrix is not None and entry.quantized else None
        yield entry, simulated_tensor(source, entry, imp, ternary_absmean=absmean, super_weights=sws)


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

    source = checked_source(prepared.plan)
    backend = TorchBackend(source.path, n_threads=n_threads)
    weights = simulated_tensors(prepared.plan, imatrix=prepared.imatrix, super_weights=prepared.restore,
                                source=source)
    backend.load_weights(((e.hf_name, w) for e, w in weights),
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
