"""Printing the bad-input corpus as docs/errors.md rows (test-only helper, run by hand)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def print_case_rows(cases: Mapping[str, str], scenarios: Callable[..., list[Any]],
                    describe: Callable[[Any, list[str]], tuple[str, list[str]]]) -> None:
    """Run each case's first scenario through the CLI and print it as a table row.

    ``describe(scenario, stderr_lines)`` gives the error's shown name and the lines to quote.
    """
    from helpers_models import build_tiny_model

    from aqrecipe.cli import commands as cli

    root = Path(tempfile.mkdtemp())
    (root / "tiny").mkdir()
    tiny = build_tiny_model(root / "tiny", "llama")
    for case_id in cases:
        work = root / case_id
        work.mkdir()
        for s in scenarios(case_id, work, lambda: tiny)[:1]:
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    cli.main(s.argv)
                except SystemExit:  # argparse's usage errors
                    pass
            name, lines = describe(s, err.getvalue().splitlines())
            text = "<br>".join(ln.strip() for ln in lines).replace(f"{work}/", "").replace(f"{root}/", "")
            print(f"| `{case_id}` | {cases[case_id]} | {name} | {text.replace('|', '&#124;')} |")
