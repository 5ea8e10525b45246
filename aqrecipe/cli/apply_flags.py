"""``apply`` / ``quantize`` command-line flags, their ApplyOptions and the run summary.

Kept out of :mod:`aqrecipe.cli.commands` so that module stays a small dispatcher.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from aqrecipe.cli.numbers import finite_float

if TYPE_CHECKING:
    from aqrecipe.apply.options import ApplyOptions, ApplyResult
    from aqrecipe.plan import Rule


def add_apply_arguments(p: argparse.ArgumentParser) -> None:
    """Positional and flags of ``aqrecipe apply``."""
    p.add_argument("target", help="recipe.yaml or plan.json")
    p.add_argument("-o", "--output", help="output file (overrides output.path)")
    p.add_argument("--model", help="override the recipe's model (as validate and compile do)")
    p.add_argument("--set", action="append", metavar="PATTERN=TYPE", help="extra rule, before the recipe's")
    add_run_flags(p)


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    """Positional and flags of ``aqrecipe quantize``."""
    p.add_argument("model", help="'demo', a Hugging Face model folder or an F16/BF16/F32 GGUF file")
    p.add_argument("--type", "-t", required=True, help="a llama.cpp file type (Q4_K_M, Q8_0, ...) or a block type")
    p.add_argument("-o", "--output", help="output .gguf")
    p.add_argument("--set", action="append", metavar="PATTERN=TYPE", help="per-tensor override")
    p.add_argument("--emit-recipe", action="store_true", help="print the equivalent recipe and exit")
    p.add_argument("--protect-super-weights", action="store_true", help="find super weights, keep their tensors at Q8_0")
    p.add_argument("--target-bpw", type=finite_float(0, 32, low_open=True, unit="bits per weight"), metavar="BPW",
                   help="let the planner choose per-tensor types for this size (> 0 and <= 32, as planner.target_bpw)")
    p.add_argument("--rounding", choices=("rtn", "gptq"), default="rtn",
                   help="rtn: each block on its own (llama.cpp's way, default); gptq: error-compensating rounding "
                        "with the layer inputs' Hessians from a calibration pass (quantization.rounding)")
    add_run_flags(p)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by apply and quantize: evaluation, report, imatrix, work folder, memory."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--eval", action="store_true", help="evaluate the output (PPL, KLD, top-1)")
    g.add_argument("--no-eval", action="store_true", help="skip evaluation even if the recipe asks for it")
    p.add_argument("--report", help="write the run's JSON report here")
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix (.gguf or llama.cpp .dat) for the packer")
    p.add_argument("--work-dir", help="layer checkpoints (default: OUT's folder/.aqrecipe-work/NAME); "
                   "one run at a time per folder")
    p.add_argument("--restart", action="store_true", help="discard checkpoints of an earlier run")
    add_max_memory_flag(p)
    add_allow_requantize_flag(p)


def add_allow_requantize_flag(p: argparse.ArgumentParser) -> None:
    """``--allow-requantize`` (validate, compile, apply, quantize): accept an already quantized GGUF as the model."""
    p.add_argument("--allow-requantize", action="store_true",
                   help="accept an already quantized GGUF model (it is dequantized; the rounding errors of "
                        "both quantizations add up), as llama-quantize --allow-requantize")


def add_max_memory_flag(p: argparse.ArgumentParser) -> None:
    """``--max-memory SIZE`` (apply, quantize, imatrix compute)."""
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory limit, e.g. 4GiB: the calibration cache spills to disk above it; "
                        "refused up front when the model's largest layer cannot fit")


def max_memory_bytes(args: argparse.Namespace) -> int | None:
    """The parsed ``--max-memory`` (MemoryLimitError when malformed), or None."""
    text = getattr(args, "max_memory", None)
    if text is None:
        return None
    from aqrecipe.calibration.memory import parse_memory

    return parse_memory(text)


def apply_options(args: argparse.Namespace, extra_rules: Sequence[Rule] = ()) -> ApplyOptions:
    """ApplyOptions from apply/quantize flags (``extra_rules``: apply's --set rules)."""
    from aqrecipe.apply.options import ApplyOptions

    return ApplyOptions(
        evaluate=False if args.no_eval else (True if args.eval else None),
        report_path=Path(args.report) if args.report else None,
        imatrix_path=Path(args.imatrix) if getattr(args, "imatrix", None) else None,
        work_dir=Path(args.work_dir) if args.work_dir else None,
        restart=args.restart,
        quiet=args.quiet or args.json,
        extra_rules=tuple(extra_rules),
        max_memory=max_memory_bytes(args),
        plan_path=_plan_target(args),
    )


def _plan_target(args: argparse.Namespace) -> Path | None:
    """apply's target when it is a plan file (load_target's rule: a .json is a plan), else None."""
    target = getattr(args, "target", None)
    return Path(target) if target and Path(target).suffix == ".json" else None


def summary_text(result: ApplyResult) -> str:
    """The human summary of an apply: plan totals, output, quality, peak RSS and stage times."""
    from aqrecipe.evaluate import format_report_table
    from aqrecipe.plan import human_bytes, render_plan

    lines = [render_plan(result.plan, verbose=False), f"wrote {result.output} ({human_bytes(result.output_bytes)})"]
    if result.quality:
        from aqrecipe.evaluate import QualityReport

        lines.append(format_report_table(QualityReport.from_dict(result.quality)))
    for failure in result.extra.get("evaluation_failed", ()):
        lines.append(f"{failure['stage']} FAILED: {failure['message'].splitlines()[0]} (the output above is kept)")
    rss = result.extra.get("peak_rss_bytes")
    times = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    if rss:
        children = result.extra.get("peak_rss_children_bytes") or 0
        lines.append(f"peak RSS {human_bytes(rss)}" + (f" (child processes {human_bytes(children)})" if children else "")
                     + f"; time: {times}")
    if result.report_path:
        lines.append(f"report: {result.report_path}")
    return "\n".join(lines)
