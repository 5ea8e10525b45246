"""``aqrecipe smoothquant MODEL -o OUT``: the flag form of the ``smoothquant:`` recipe section."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from aqrecipe.errors import EXIT_OK

log = logging.getLogger(__name__)


def _alpha(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha must be a number in [0, 1] or 'auto', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``smoothquant`` subcommand."""
    parser.add_argument("model", help="'demo' or a Hugging Face folder")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output folder (compressed-tensors) or .gguf file (gguf-q8_0)")
    parser.add_argument("--alpha", type=_alpha, default=0.5, help="migration strength in [0, 1] or 'auto'")
    parser.add_argument("--format", choices=("compressed-tensors", "gguf-q8_0", "none"),
                        default="compressed-tensors", help="what to write")
    parser.add_argument("--activations", choices=("dynamic-per-token", "static-per-tensor"),
                        default="dynamic-per-token", help="int8 activation scheme")
    parser.add_argument("--no-smoothing", action="store_true", help="plain W8A8 (baseline)")
    parser.add_argument("--samples", type=int, default=128, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    parser.add_argument("--work-dir", type=Path, default=Path("aqrecipe-work"),
                        help="checkpoints, scales file and report")
    parser.add_argument("--eval-chunks", type=int, default=16, help="evaluation windows (0: skip)")
    parser.add_argument("--eval-context", type=int, default=512, help="tokens per evaluation window")
    parser.add_argument("--problem-threshold", type=float, default=0.05,
                        help="activation relative MSE above which a linear is reported")


def section_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe section equivalent to the flags (``--emit-recipe`` material)."""
    return {"enabled": not args.no_smoothing, "alpha": args.alpha, "activations": {"type": args.activations},
            "output": {"type": args.format}, "problem_threshold": args.problem_threshold}


def run(args: argparse.Namespace) -> int:
    """Run SmoothQuant from parsed flags; prints the result as JSON. Errors propagate (AqrecipeError)."""
    from aqrecipe.calibration import CalibrationSpec
    from aqrecipe.smoothquant.pipeline import run_smoothquant

    spec = CalibrationSpec(samples=args.samples, seq_len=args.seq_len)
    result = run_smoothquant(section_from_args(args), args.model, spec, args.work_dir, args.output,
                             evaluate=args.eval_chunks > 0, eval_chunks=max(args.eval_chunks, 1),
                             eval_context=args.eval_context, quiet=False)
    print(json.dumps(result.to_dict(), indent=1, sort_keys=True))
    return EXIT_OK
