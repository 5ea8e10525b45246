"""CLI front (issue 16, classes 4 and 8): float flags, a closed pipe, control characters in what is printed.

Runs the real entry point (in-process through ``main``, or as a subprocess where the pipe matters).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.cli import commands as cli
from aqrecipe.cli.numbers import describe_range, finite_float
from aqrecipe.cli.terminal import printable

ESC = "\x1b"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = int(exc.code)
    return code, out.getvalue(), err.getvalue()


# --- class 4: one reader for every float flag -----------------------------------------
@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e999", "-1e999"])
def test_finite_float_refuses_non_finite(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not finite"):
        finite_float(0, 32, low_open=True)(text)


@pytest.mark.parametrize("text, ok", [("0", False), ("1e-300", True), ("4.5", True), ("32", True),
                                      ("32.0001", False), ("-1", False), ("abc", False), ("", False),
                                      ("0x10", False), ("1_0", True)])
def test_finite_float_bounds(text: str, ok: bool) -> None:
    read = finite_float(0, 32, low_open=True, unit="bits per weight")
    if ok:
        assert read(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be a finite number > 0 and <= 32 \(bits per weight\)"):
            read(text)


def test_describe_range_words() -> None:
    assert describe_range(0, 1) == "from 0 to 1"
    assert describe_range(0, None, low_open=True) == "> 0"
    assert describe_range(None, 10, high_open=True) == "< 10"
    assert describe_range(None, None) == "any finite number"


@pytest.mark.parametrize("value, words", [("nan", "not finite"), ("inf", "not finite"),
                                          ("0", "> 0 and <= 32"), ("-3", "> 0 and <= 32"), ("100", "<= 32")])
def test_target_bpw_flag_is_a_usage_error_before_any_work(value: str, words: str, tmp_path: Path) -> None:
    code, out, err = run(["quantize", "demo", "--type", "Q4_K", "--target-bpw", value, "-o", str(tmp_path / "o.gguf")])
    assert code == 2 and "argument --target-bpw: must be a finite number" in err and words in err, err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_every_float_flag_uses_the_reader() -> None:
    parser = cli.build_parser()
    floats = []

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            elif action.type is float:
                floats.append(action.dest)

    walk(parser)
    assert floats == [], f"flags read with plain float (NaN passes): {floats}"


# --- class 8: a closed pipe, control characters ---------------------------------------
def _noisy_recipe(folder: Path) -> Path:
    path = folder / "many.yaml"
    path.write_text("version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\n"
                    + "".join(f"unknown_{i}: 1\n" for i in range(3000)))  # ~1 MB of --json: more than a pipe holds
    return path


@pytest.mark.parametrize("mode", ["--json", "text"])
def test_error_output_into_a_closed_pipe_is_quiet(mode: str, tmp_path: Path) -> None:
    recipe = _noisy_recipe(tmp_path)
    flags = ["--json"] if mode == "--json" else []
    redirect = "" if mode == "--json" else " 2>&1"
    cmd = f"{sys.executable} -m aqrecipe.cli validate {' '.join(flags)} --schema-only {recipe}{redirect} | head -c 100"
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} >/dev/null; echo \"rc=${{PIPESTATUS[0]}}\" >&2"],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr[-2000:]
    assert "rc=2" in proc.stderr, proc.stderr[-500:]


def test_printable_escapes_what_controls_a_terminal() -> None:
    text = f"a{ESC}[2Jb\x07c\x9bd\u202ee\u2066f\r\x00\ng\th"
    assert printable(text) == "a\\x1b[2Jb\\x07c\\x9bd\\u202ee\\u2066f\\x0d\\x00\ng\th"
    assert printable("blk.0.attn_q.weight → Q4_K ✓ 日本") == "blk.0.attn_q.weight → Q4_K ✓ 日本"


def test_recipe_path_and_values_with_escapes_are_printed_escaped(tmp_path: Path) -> None:
    recipe = tmp_path / f"r{ESC}]0;pwned{ESC}\\.yaml"
    recipe.write_text('version: 1\nmodel: demo\nquantization: {mixture: Q8_0}\n"\\e[2Jbad": 1\n'
                      'name: "\\e[31m"\nevaluation: {chunks: "\\e]52;c;ZXZpbA==\\a"}\n')
    code, out, err = run(["validate", "--schema-only", str(recipe)])
    assert code == 2 and "R101" in err and "R103" in err
    assert ESC not in err and "\x07" not in err, err
    assert "\\x1b" in err


def test_tensor_names_from_a_file_are_printed_escaped(tmp_path: Path) -> None:
    from aqrecipe.imatrix import ImatrixData, ImatrixEntry, encode_dat

    name = f"blk.0.{ESC}]52;c;ZXZpbA==\x07.weight"
    data = ImatrixData({name: ImatrixEntry(np.ones((1, 32), np.float32), np.array([1], np.float32))}, ["t"], 1, 512)
    (tmp_path / "evil.dat").write_bytes(encode_dat(data))
    for argv in (["inspect", str(tmp_path / "evil.dat")], ["imatrix", "show", str(tmp_path / "evil.dat")]):
        code, out, err = run(argv)
        assert code == 0, err
        assert ESC not in out + err and "\x07" not in out + err, out
        assert "\\x1b]52" in out, out


def test_log_records_are_printed_escaped(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", (
        "import logging, sys\n"
        "from aqrecipe.cli import commands as c\n"
        "c._configure_logging(c.build_parser().parse_args(['validate', 'x']))\n"
        "logging.getLogger('aqrecipe').warning('tensor %s', 'a\\x1b[2Jb')\n")],
        capture_output=True, text=True, timeout=120)
    assert "tensor a\\x1b[2Jb" in proc.stderr and ESC not in proc.stderr, proc.stderr


def test_inspect_refuses_special_files_without_blocking(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from aqrecipe.cli import commands

    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    for path in (fifo, tmp_path):
        assert commands.main(["inspect", str(path)]) == 2
        err = capsys.readouterr().err
        assert "error[AQ302]" in err and "not a file inspect can read" in err
