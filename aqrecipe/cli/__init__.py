"""The command line, on top of everything: argparse front-ends that call the layers below.

``aqrecipe.cli:entry_point`` is the console script; :func:`main` runs one command
and returns its exit code.
"""

from aqrecipe.cli.commands import build_parser, entry_point, main

__all__ = ["build_parser", "entry_point", "main"]
