"""What one apply is asked to do (:class:`ApplyOptions`) and what it produced (:class:`ApplyResult`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqrecipe.formats.fileio import atomic_write_text
from aqrecipe.plan import Plan, Rule
from aqrecipe.recipe import Recipe


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
    plan_path: Path | None = None  # apply PLAN.json: the plan file, an input no output may replace

    def evaluates(self, recipe: Recipe | None) -> bool:
        """Whether this run evaluates its output: ``--eval``/``--no-eval``, else the recipe's evaluation section."""
        if self.evaluate is not None:
            return self.evaluate
        return bool(recipe is not None and recipe.evaluation.enabled)


def default_work_dir(dest: Path) -> Path:
    """Checkpoints live beside the output so a rerun of the same command resumes."""
    return dest.parent / ".aqrecipe-work" / dest.name


def write_report(result: ApplyResult, path: Path) -> None:
    """The run's JSON report: output, plan totals, per-tensor types and quality (atomic)."""
    data = result.to_dict()
    data["plan"] = result.plan.to_dict()
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def wants_folder(recipe: Recipe | None, options: ApplyOptions) -> bool:
    """True when this apply writes a safetensors folder (``output.format`` or ``-o DIR/``)."""
    fmt = getattr(options, "output_format", None) or (recipe.output.format if recipe is not None else "gguf")
    return fmt == "safetensors"
