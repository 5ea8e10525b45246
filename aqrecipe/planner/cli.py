"""CLI pieces: ``--target-bpw X`` for ``quantize`` (one flag), and a ``plan`` command runner.

``quantize MODEL --type T --target-bpw X [--imatrix F]`` means: the planner
chooses per-tensor types at X bits per weight (T is ignored for the tensors the
planner covers); ``--emit-recipe`` prints the section from :func:`section_from_args`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import EXIT_OK, AqrecipeError, EXIT_USER_ERROR
from .config import PlannerSpec

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser, *, standalone: bool = False) -> None:
    """Add ``--target-bpw`` (and, for the standalone ``plan`` command, its own inputs)."""
    parser.add_argument("--target-bpw", type=float, default=None, metavar="X",
                        help="choose per-tensor types with the dynamic planner at X bits per weight")
    if standalone:
        parser.add_argument("model", help='"demo" or an HF folder')
        parser.add_argument("--imatrix", type=Path, help="importance matrix (.gguf or .dat)")
        parser.add_argument("--max-kld", type=float, default=None, help="cap on predicted KLD")
        parser.add_argument("--work-dir", type=Path, default=Path(".aqrecipe-planner"),
                            help="measurements are saved here and reused for other budgets")
        parser.add_argument("--report", type=Path, help="write REPORT.md/.json/.png")


def section_from_args(args: argparse.Namespace) -> PlannerSpec | None:
    """The recipe's ``planner:`` section the flags stand for (None without ``--target-bpw``)."""
    bpw = getattr(args, "target_bpw", None)
    if bpw is None and getattr(args, "max_kld", None) is None:
        return None
    return PlannerSpec(target_bpw=bpw, max_kld=getattr(args, "max_kld", None))


def run(args: argparse.Namespace) -> int:
    """``aqrecipe plan MODEL --target-bpw X``: print the rules as recipe YAML and the report."""
    from ..imatrix import load_imatrix
    from .dynamic import plan_dynamic

    try:
        spec = section_from_args(args)
        if spec is None:
            raise AqrecipeError("give --target-bpw or --max-kld", hint="e.g. --target-bpw 3.5")
        imatrix = load_imatrix(args.imatrix) if args.imatrix else None
        rules, report = plan_dynamic(args.model, spec, imatrix, args.work_dir)
    except AqrecipeError as exc:
        log.error("%s", exc)
        return EXIT_USER_ERROR
    print("  rules:")
    for r in rules:
        print(f"    - match: {r.pattern}\n      type: {r.type}")
    print(report.to_markdown())
    if args.report:
        report.save(args.report)
    return EXIT_OK
