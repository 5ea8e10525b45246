"""CLI glue for ``aqrecipe report IMPORTANCE.json [--plot PNG] [--json]`` (wired by cli.py).

``--model MODEL`` computes the importance file first when it does not exist
(detection settings from ``--detect``; defaults otherwise).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from aqrecipe.cli.terminal import printable
from aqrecipe.errors import EXIT_OK

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``report`` verb for importance files."""
    parser.add_argument("importance", type=Path, help="importance file (NAME.json beside NAME.safetensors)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write a PNG of per-layer importance "
                        "with the super weights marked")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--model", help="compute the importance file from this model when it does not exist "
                        "(\"demo\" or an HF folder)")
    parser.add_argument("--detect", choices=("combined", "activation", "gradient"), default="combined",
                        help="detection method when computing (default combined)")


def run(args: argparse.Namespace) -> int:
    """Print the summary (text or JSON); write the plot when asked. AqrecipeErrors propagate."""
    from aqrecipe.importance.model import _paths, load_importance, save_importance
    from aqrecipe.importance.plot import plot_importance
    from aqrecipe.importance.summary import summarize_importance

    if args.model and not _paths(args.importance)[0].exists():
        from aqrecipe.importance.config import DetectSpec
        from aqrecipe.importance.detect import analyze_importance
        from aqrecipe.models import open_model

        obj = analyze_importance(open_model(args.model), DetectSpec(type=args.detect))
        save_importance(obj, args.importance)
    else:
        obj = load_importance(args.importance)
    summary, text = summarize_importance(obj)
    if args.plot:
        plot_importance(obj, args.plot)
        summary["plot"] = str(args.plot)
    print(json.dumps(summary, indent=1, sort_keys=True) if args.json else printable(text),
          end="" if not args.json else "\n")
    return EXIT_OK
