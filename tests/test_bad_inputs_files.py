"""Bad-input corpus, part B (issue #8, #16): GGUF files, imatrix files, calibration text, recipes,
output paths that would destroy an input (one rule: aqrecipe.formats.paths) and whole-file reads of
special or oversized files (one reader: aqrecipe.formats.bounded).

Every case runs the real CLI (``aqrecipe.cli.commands.main`` with ``--json``, one case also
as a subprocess) on one kind of bad input and checks: exit code 2, the error
class, the message's key words, no traceback, and that no output appears (the
destination is absent and no ``*.tmp-*`` file is left in its folder).

``python tests/test_bad_inputs_files.py`` prints the messages as the CLI prints
them (the source of the tables in docs/errors.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe.cli import commands as cli
from aqrecipe.errors import (
    EXIT_USER_ERROR,
    AqrecipeError,
    CalibrationDataError,
    GGUFFormatError,
    ImatrixError,
    InfeasibleBudgetError,
    ModelError,
    OutputError,
    PlanError,
    RecipeError,
)
from aqrecipe.imatrix import ImatrixData, ImatrixEntry, encode_dat, save_imatrix

CASES = {
    "gguf-bad-magic": "a .gguf file whose first 4 bytes are not 'GGUF'",
    "gguf-truncated-tensor": "a GGUF model cut short: the last tensor's data runs past the end of the file",
    "gguf-unknown-type-id": "a tensor's ggml type id is 255 (no such type)",
    "gguf-bad-version": "the GGUF version field is 99",
    "gguf-huge-count": "tensor count, metadata count or a string length of 2**62: refused before allocation",
    "gguf-empty-file": "a .gguf file of 0 bytes",
    "gguf-eval-truncated": "`aqrecipe eval` of a truncated GGUF: the reason, not just 'llama.cpp failed'",
    "imatrix-truncated-gguf": "a GGUF imatrix cut inside its tensor data",
    "imatrix-truncated-dat": "a legacy .dat imatrix cut inside an entry's values",
    "imatrix-other-model": "an imatrix whose names and column counts belong to another model",
    "imatrix-non-finite": "an imatrix holding NaN: the message names the tensor",
    "imatrix-negative": "an imatrix holding a negative mean square (impossible): names the tensor",
    "imatrix-wrong-extension-or-format": "a model GGUF or random bytes given as an imatrix; an unknown output suffix",
    "calib-empty-text": "a calibration text file that is empty (or only whitespace)",
    "calib-binary-text": "a calibration 'text' file with NUL bytes, or not UTF-8",
    "calib-too-short": "fewer tokens than samples x seq_len: says how many are needed and available",
    "calib-jsonl-missing-field": "a JSON-lines record without the text field",
    "calib-jsonl-bad-line": "a JSON-lines file whose line 2 is not JSON",
    "recipe-model-missing": "apply of a recipe whose model folder does not exist",
    "recipe-imatrix-file-missing": "a recipe's `imatrix: {type: file}` names a file that does not exist",
    "recipe-calib-text-missing": "a recipe's calibration text file does not exist",
    "recipe-eval-text-missing": "a recipe's evaluation text file does not exist (checked before packing)",
    "recipe-planner-infeasible": "a planner size target below the smallest possible model",
    "recipe-stale-plan": "apply of a compiled plan after the model changed",
    "recipe-plan-not-json": "apply of a plan file that is not JSON",
    # output paths (issue 16, class 1): one rule, aqrecipe.formats.paths.check_write_targets
    "output-over-model-file": "-o names a file of the HF model folder, or adds a .safetensors file to it",
    "output-over-gguf-model": "-o is the GGUF model itself, or another part of a split GGUF model",
    "output-over-recipe": "--report, -o or compile -o name the recipe (or apply -o the plan it applies)",
    "output-over-input-file": "-o or --report name the imatrix, calibration or evaluation text the run reads",
    "output-symlink-to-input": "-o is a symlink to a model file; --report a hard link of the recipe",
    "output-clashes-with-output": "two outputs on one path: -o and --report, imatrix.save and -o, -o in --work-dir",
    "output-special-file": "-o or --report is a FIFO, a socket, a character device, or under /sys or /dev",
    "output-folder-holds-input": "a folder output or work folder that is, or holds, the model folder or the recipe",
    "work-dir-not-ours": "--work-dir names an existing folder aqrecipe did not make (its files would be deleted)",
    # whole-file reads (issue 16, class 2): one reader, aqrecipe.formats.bounded.read_bounded
    "read-recipe-special": "a recipe that is /dev/zero, a FIFO or a folder: refused unread, never a hang",
    "read-recipe-too-large": "a recipe over 1 MiB (sparse: nothing is read), or a /proc file whose size says 0",
    "read-plan-special-or-large": "a plan file that is a FIFO or over 256 MiB",
    "read-imatrix-special-or-large": "an imatrix that is /dev/zero, a FIFO or a .dat over 4 GiB",
    "read-text-special-or-large": "calibration text that is a FIFO, /dev/zero or over 256 MiB",
    "read-model-json-too-large": "a model folder's config.json or tokenizer_config.json over 128 MiB",
}

CALIB = ["--samples", "128", "--seq-len", "16"]  # 2048 tokens: small, inside the allowed range


@dataclass(frozen=True)
class Scenario:
    argv: list[str]
    error: type[AqrecipeError]
    words: tuple[str, ...]
    outputs: tuple[Path, ...] = ()
    code: str | None = None  # the error's code when the class is raised with its own (AQ702 ...)
    frozen: tuple[Path, ...] = ()  # trees the run must leave exactly as they were (nothing created either)
    env: tuple[tuple[str, str], ...] = ()  # environment of the run (e.g. a lowered read limit)


@dataclass
class Outcome:
    code: int
    error: dict
    printed: str  # stderr (logs) of the run


def _with_json(argv: list[str]) -> list[str]:
    at = 2 if argv[0] == "imatrix" else 1
    return [*argv[:at], "--json", *argv[at:]]


def run_cli(argv: list[str]) -> Outcome:
    """Run ``aqrecipe ARGV --json`` in-process; the error document and everything printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(_with_json(argv))
    text = out.getvalue() + err.getvalue()
    assert "Traceback" not in text, text
    doc = json.loads(out.getvalue()) if code == EXIT_USER_ERROR else {}
    return Outcome(code, doc.get("error", {}), err.getvalue())


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under ``root`` (itself included): kind and permission bits, inode, size, mtime."""
    entries = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
    found = {}
    for p in entries:
        st = p.lstat()
        found[str(p.relative_to(root)) if p != root else "."] = (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _guarded(run: Callable[[], Outcome], seconds: int = 240) -> Outcome:
    """``run()``, failed after ``seconds`` instead of hanging (a FIFO read would block forever)."""
    def alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"the run took more than {seconds} s (blocked on a FIFO? reading without bound?)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return run()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check(s: Scenario) -> Outcome:
    """Run one scenario and assert the whole contract; returns the outcome."""
    before = {p: snapshot(p) for p in s.frozen}
    saved = {k: os.environ.get(k) for k, _ in s.env}
    os.environ.update(dict(s.env))
    try:
        outcome = _guarded(lambda: run_cli(s.argv))
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert outcome.code == EXIT_USER_ERROR, (outcome.code, outcome.printed)
    assert outcome.error["type"] == s.error.__name__, outcome.error
    assert outcome.error["code"] == (s.code or s.error.code), outcome.error
    for p, tree in before.items():
        assert snapshot(p) == tree, f"{p} changed: {sorted(set(snapshot(p).items()) ^ set(tree.items()))[:6]}"
    assert outcome.error["hint"], outcome.error
    message = outcome.error["message"]
    for word in s.words:
        assert word in message, f"{word!r} not in {message!r}"
    for dest in s.outputs:
        assert not dest.exists(), f"{dest} was written"
        leftovers = [p.name for p in dest.parent.iterdir() if ".tmp-" in p.name]
        assert not leftovers, leftovers
    return outcome


# --- files ---------------------------------------------------------------------------
def model_gguf(folder: Path) -> Path:
    """A tiny llama-style GGUF model written by gguf-py (2 F32 tensors, a string array)."""
    path = folder / "model.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_tensor("token_embd.weight", np.ones((8, 32), np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.ones((32, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def patched(src: Path, dest: Path, offset: int, fmt: str, value: int) -> Path:
    raw = bytearray(src.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    dest.write_bytes(bytes(raw))
    return dest


def tensor_type_offset(path: Path, name: str) -> int:
    """Byte offset of ``name``'s type id in the tensor-info section."""
    raw = path.read_bytes()
    at = raw.index(name.encode()) + len(name)
    (n_dims,) = struct.unpack_from("<I", raw, at)
    return at + 4 + 8 * n_dims


def sample_imatrix(cols: dict[str, int], seed: int = 0) -> ImatrixData:
    rng = np.random.default_rng(seed)
    return ImatrixData({n: ImatrixEntry(rng.uniform(1, 9, (1, c)), np.array([512], np.float32))
                        for n, c in cols.items()}, ["test"], 1, 512)


def tiny_imatrix() -> ImatrixData:
    return sample_imatrix({"blk.0.attn_q.weight": 64, "blk.0.ffn_down.weight": 96})


def write_recipe(folder: Path, name: str, model: Path | str, extra: str = "") -> Path:
    path = folder / name
    evaluation = "" if "evaluation:" in extra else "evaluation: {enabled: false}\n"
    path.write_text(f"version: 1\nmodel: {model}\nquantization:\n  default: Q8_0\n{extra}{evaluation}")
    return path


# --- the cases (one builder per id; ``model`` gives the tiny llama folder) ------------
Builder = Callable[[Path, Callable[[], Path]], "Scenario | list[Scenario]"]


def gguf_bad_magic(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    bad = patched(model_gguf(tmp), tmp / "bad.gguf", 0, "<I", 0x58554747)  # "GGUX"
    return [Scenario(["inspect", str(bad)], GGUFFormatError, ("magic", "GGUF")),
            Scenario(["imatrix", "convert", str(bad), str(tmp / "o.dat")], ImatrixError, ("not a GGUF",),
                     (tmp / "o.dat",))]


def gguf_truncated_tensor(tmp: Path, model: Callable[[], Path]) -> Scenario:
    raw = model_gguf(tmp).read_bytes()
    (tmp / "cut.gguf").write_bytes(raw[:-100])
    return Scenario(["inspect", str(tmp / "cut.gguf")], GGUFFormatError, ("blk.0.attn_q.weight", "end of the file"))


def gguf_unknown_type_id(tmp: Path, model: Callable[[], Path]) -> Scenario:
    src = model_gguf(tmp)
    bad = patched(src, tmp / "t255.gguf", tensor_type_offset(src, "token_embd.weight"), "<I", 255)
    return Scenario(["inspect", str(bad)], GGUFFormatError, ("token_embd.weight", "type id 255"))


def gguf_bad_version(tmp: Path, model: Callable[[], Path]) -> Scenario:
    bad = patched(model_gguf(tmp), tmp / "v99.gguf", 4, "<I", 99)
    return Scenario(["inspect", str(bad)], GGUFFormatError, ("version 99",))


def gguf_huge_count(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    src, huge = model_gguf(tmp), 2**62
    fields = [(8, (f"{huge} tensors", "cannot hold")),  # tensor count
              (16, (f"{huge} metadata", "cannot hold")),  # metadata count
              (24, ("metadata key 0", f"{huge} bytes"))]  # length of the first key
    return [Scenario(["inspect", str(patched(src, tmp / f"huge{i}.gguf", off, "<Q", huge))], GGUFFormatError, words)
            for i, (off, words) in enumerate(fields)]


def gguf_empty_file(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    (tmp / "empty.gguf").write_bytes(b"")
    return [Scenario(["inspect", str(tmp / "empty.gguf")], GGUFFormatError, ("0 bytes",)),
            Scenario(["imatrix", "show", str(tmp / "empty.gguf")], ImatrixError, ("empty",))]


def gguf_eval_truncated(tmp: Path, model: Callable[[], Path]) -> Scenario:
    pytest.importorskip("llama_cpp")
    raw = model_gguf(tmp).read_bytes()
    (tmp / "cut.gguf").write_bytes(raw[:-100])
    argv = ["eval", str(tmp / "cut.gguf"), "--chunks", "1", "--context", "16"]
    return Scenario(argv, GGUFFormatError, ("blk.0.attn_q.weight", "end of the file"))


def imatrix_truncated_gguf(tmp: Path, model: Callable[[], Path]) -> Scenario:
    raw = save_imatrix(tiny_imatrix(), tmp / "im.gguf").read_bytes()
    (tmp / "cut.gguf").write_bytes(raw[:-40])
    return Scenario(["imatrix", "show", str(tmp / "cut.gguf")], ImatrixError, ("cut.gguf", "end of the file"))


def imatrix_truncated_dat(tmp: Path, model: Callable[[], Path]) -> Scenario:
    (tmp / "cut.dat").write_bytes(encode_dat(tiny_imatrix())[:200])
    dest = tmp / "out.gguf"
    return Scenario(["imatrix", "convert", str(tmp / "cut.dat"), str(dest)], ImatrixError,
                    ("cut.dat", "blk.0.attn_q.weight", "end of the file"), (dest,))


def imatrix_other_model(tmp: Path, model: Callable[[], Path]) -> Scenario:
    other = sample_imatrix({"blk.0.attn_q.weight": 128, "blk.7.ffn_down.weight": 96})
    save_imatrix(other, tmp / "other.gguf")
    dest = tmp / "out.gguf"
    argv = ["quantize", str(model()), "--type", "Q4_K", "-o", str(dest), "--imatrix", str(tmp / "other.gguf"),
            "--no-eval"]
    return Scenario(argv, ImatrixError, ("does not belong to this model", "blk.0.attn_q.weight (128 columns",
                                         "64 in the model", "blk.7.ffn_down.weight"), (dest,))


def imatrix_non_finite(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    data = tiny_imatrix()
    data.entries["blk.0.ffn_down.weight"].in_sum2[0, 5] = np.nan
    save_imatrix(data, tmp / "nan.gguf")
    raw = bytearray(encode_dat(tiny_imatrix()))
    struct.pack_into("<f", raw, len(raw) - 16, np.inf)  # the last value (blk.0.ffn_down) before the trailer
    (tmp / "inf.dat").write_bytes(bytes(raw))
    return [Scenario(["imatrix", "show", str(tmp / "nan.gguf")], ImatrixError,
                     ("blk.0.ffn_down.weight", "non-finite")),
            Scenario(["imatrix", "convert", str(tmp / "inf.dat"), str(tmp / "o.gguf")], ImatrixError,
                     ("blk.0.ffn_down.weight", "non-finite"), (tmp / "o.gguf",))]


def imatrix_negative(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    raw = bytearray(encode_dat(tiny_imatrix()))
    struct.pack_into("<f", raw, len(raw) - 16, -1.0)  # the last value (blk.0.ffn_down) before the trailer
    (tmp / "neg.dat").write_bytes(bytes(raw))
    data = tiny_imatrix()
    data.entries["blk.0.attn_q.weight"].in_sum2[0, 1] = -3.0
    save_imatrix(data, tmp / "neg.gguf")
    return [Scenario(["imatrix", "convert", str(tmp / "neg.dat"), str(tmp / "o.gguf")], ImatrixError,
                     ("blk.0.ffn_down.weight", "negative"), (tmp / "o.gguf",)),
            Scenario(["imatrix", "show", str(tmp / "neg.gguf")], ImatrixError, ("blk.0.attn_q.weight", "negative"))]


def imatrix_wrong_format(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    (tmp / "noise.dat").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    save_imatrix(tiny_imatrix(), tmp / "im.gguf")
    dest = tmp / "out.gguf"
    argv = ["quantize", str(model()), "--type", "Q8_0", "-o", str(dest), "--no-eval", "--imatrix"]
    return [Scenario([*argv, str(model_gguf(tmp))], ImatrixError, ("not an imatrix", "looks like a llama model"), (dest,)),
            Scenario(["imatrix", "show", str(tmp / "noise.dat")], ImatrixError, ("noise.dat", "malformed")),
            Scenario(["imatrix", "convert", str(tmp / "im.gguf"), str(tmp / "im.txt")], ImatrixError,
                     ("im.txt", "suffix"), (tmp / "im.txt",))]


def _compute(tmp: Path, model: Callable[[], Path], source: str, path: Path) -> list[str]:
    return ["imatrix", "compute", str(model()), "--source", source, "--text", str(path),
            "-o", str(tmp / "im.gguf"), *CALIB]


def calib_empty_text(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    (tmp / "empty.txt").write_text("")
    (tmp / "blank.txt").write_text(" \n\n\t \n")
    return [Scenario(_compute(tmp, model, "text", tmp / name), CalibrationDataError, (name, "empty"),
                     (tmp / "im.gguf",)) for name in ("empty.txt", "blank.txt")]


def calib_binary_text(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    (tmp / "nul.txt").write_bytes(b"token ids \x00\x01\x02\x00 " * 40)
    (tmp / "latin1.txt").write_bytes("caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e. ".encode("latin-1") * 20)
    return [Scenario(_compute(tmp, model, "text", tmp / "nul.txt"), CalibrationDataError,
                     ("nul.txt", "binary", "NUL"), (tmp / "im.gguf",)),
            Scenario(_compute(tmp, model, "text", tmp / "latin1.txt"), CalibrationDataError,
                     ("latin1.txt", "not valid UTF-8", "byte offset 3"), (tmp / "im.gguf",))]


def calib_too_short(tmp: Path, model: Callable[[], Path]) -> Scenario:
    (tmp / "short.txt").write_text("The quick brown fox jumps over the lazy dog. " * 8)
    return Scenario(_compute(tmp, model, "text", tmp / "short.txt"), CalibrationDataError,
                    ("short.txt", "128 samples x 16 tokens need 2048", " tokens;"), (tmp / "im.gguf",))


def calib_jsonl_missing_field(tmp: Path, model: Callable[[], Path]) -> Scenario:
    (tmp / "c.jsonl").write_text('{"text": "one record"}\n{"content": "no text field"}\n')
    return Scenario(_compute(tmp, model, "jsonl", tmp / "c.jsonl"), CalibrationDataError,
                    ("c.jsonl", "line 2", "no field 'text'", "content"), (tmp / "im.gguf",))


def calib_jsonl_bad_line(tmp: Path, model: Callable[[], Path]) -> Scenario:
    (tmp / "c.jsonl").write_text('{"text": "one record"}\n{"text": "unterminated\n')
    return Scenario(_compute(tmp, model, "jsonl", tmp / "c.jsonl"), CalibrationDataError,
                    ("c.jsonl", "line 2", "not valid JSON"), (tmp / "im.gguf",))


def _apply(tmp: Path, source: Path, error: type[AqrecipeError], words: tuple[str, ...]) -> Scenario:
    """``apply source -o tmp/out.gguf`` refused with ``error``; no out.gguf may be left."""
    return Scenario(["apply", str(source), "-o", str(tmp / "out.gguf")], error, words, (tmp / "out.gguf",))


def recipe_model_missing(tmp: Path, model: Callable[[], Path]) -> Scenario:
    recipe = write_recipe(tmp, "r.yaml", "./no-such-model")
    return _apply(tmp, recipe, ModelError, ("no-such-model", "does not exist"))


def recipe_imatrix_file_missing(tmp: Path, model: Callable[[], Path]) -> Scenario:
    recipe = write_recipe(tmp, "r.yaml", model(), "imatrix: {type: file, path: missing.imatrix.gguf}\n")
    return _apply(tmp, recipe, ImatrixError, ("missing.imatrix.gguf", "does not exist"))


def recipe_calib_text_missing(tmp: Path, model: Callable[[], Path]) -> Scenario:
    section = ("imatrix:\n  type: compute\n  calibration:\n    source: {type: text, path: missing.txt}\n"
               "    samples: 128\n    seq_len: 16\n")
    recipe = write_recipe(tmp, "r.yaml", model(), section)
    return _apply(tmp, recipe, CalibrationDataError, ("missing.txt", "does not exist"))


def recipe_eval_text_missing(tmp: Path, model: Callable[[], Path]) -> Scenario:
    section = "evaluation: {enabled: true, text: missing-eval.txt, chunks: 1, context: 16}\n"
    recipe = write_recipe(tmp, "r.yaml", model(), section)
    return _apply(tmp, recipe, CalibrationDataError, ("missing-eval.txt", "does not exist"))


def recipe_planner_infeasible(tmp: Path, model: Callable[[], Path]) -> Scenario:
    section = ("planner:\n  type: budget\n  target_bpw: 0.5\n"
               "  measurement: {type: proxy, calibrate_tensors: 0}\n")
    recipe = write_recipe(tmp, "r.yaml", model(), section)
    return _apply(tmp, recipe, InfeasibleBudgetError, ("size budget", "smallest possible model"))


def recipe_stale_plan(tmp: Path, model: Callable[[], Path]) -> Scenario:
    copy = tmp / "model"
    shutil.copytree(model(), copy)
    recipe = write_recipe(tmp, "r.yaml", copy)
    assert run_cli(["compile", str(recipe), "-o", str(tmp / "plan.json"), "--summary"]).code == 0
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
    return _apply(tmp, tmp / "plan.json", PlanError, ("changed since the plan was compiled",))


def recipe_plan_not_json(tmp: Path, model: Callable[[], Path]) -> Scenario:
    (tmp / "plan.json").write_text('{"version": 1, "entries": [')
    return _apply(tmp, tmp / "plan.json", PlanError, ("plan.json", "not valid JSON"))


# --- output paths: every write differs from every read, and is no special file -------------
def _model_copy(tmp: Path, model: Callable[[], Path]) -> Path:
    """A private copy of the tiny model: a run that wrongly writes into it cannot hurt other tests."""
    copy = tmp / "model"
    shutil.copytree(model(), copy)
    return copy


def _quantize(model: Path, out: Path | str, *extra: str) -> list[str]:
    return ["quantize", str(model), "--type", "Q8_0", "-o", str(out), "--no-eval", *extra]


def output_over_model_file(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    m = _model_copy(tmp, model)
    recipe = write_recipe(tmp, "r.yaml", m)
    words = ("of the model folder", "replace one of the model's own files")
    return [Scenario(_quantize(m, m / "model.safetensors"), OutputError, ("model.safetensors", *words),
                     code="AQ702", frozen=(tmp,)),
            Scenario(["apply", str(recipe), "-o", str(m / "config.json")], OutputError, ("config.json", *words),
                     code="AQ702", frozen=(tmp,)),
            Scenario(_quantize(m, m / "extra.safetensors"), OutputError,
                     ("would add extra.safetensors", "part of the checkpoint"), code="AQ702", frozen=(tmp,))]


def _gguf_model(tmp: Path, **kw: object) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_gguf_input import write_tiny

    return write_tiny(tmp / "tiny.gguf", "F16", **kw)


def output_over_gguf_model(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    single = _gguf_model(tmp)
    (tmp / "split").mkdir()
    _gguf_model(tmp / "split", split_max_tensors=8)
    first, second = (tmp / "split" / f"tiny-0000{i}-of-00003.gguf" for i in (1, 2))
    return [Scenario(_quantize(single, single), OutputError, ("is the model file", "destroy that input"),
                     code="AQ702", frozen=(tmp,)),
            Scenario(_quantize(first, second), OutputError, ("is the model part 2 of 3", "tiny-00002-of-00003"),
                     code="AQ702", frozen=(tmp,))]


def output_over_recipe(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    recipe = write_recipe(tmp, "r.yaml", model())
    assert run_cli(["compile", str(recipe), "-o", str(tmp / "plan.json"), "--summary"]).code == 0
    out = str(tmp / "out.gguf")
    return [Scenario(["apply", str(recipe), "-o", out, "--report", str(recipe)], OutputError,
                     ("report (--report)", "is the recipe"), code="AQ702", frozen=(tmp,)),
            Scenario(["apply", str(recipe), "-o", str(recipe)], OutputError, ("the output", "is the recipe"),
                     code="AQ702", frozen=(tmp,)),
            Scenario(["compile", str(recipe), "-o", str(recipe)], OutputError, ("plan output (-o)", "is the recipe"),
                     code="AQ702", frozen=(tmp,)),
            Scenario(["apply", str(tmp / "plan.json"), "-o", str(tmp / "plan.json")], OutputError,
                     ("the output", "is the plan"), code="AQ702", frozen=(tmp,))]


def output_over_input_file(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    im = save_imatrix(tiny_imatrix(), tmp / "im.gguf")
    (tmp / "e.txt").write_text("Some evaluation prose. " * 100)
    (tmp / "calib.dat").write_text("Some calibration prose. " * 100)
    evaluation = write_recipe(tmp, "e.yaml", model(), "evaluation: {enabled: false, text: e.txt}\n")
    return [Scenario(_quantize(model(), im, "--imatrix", str(im)), OutputError,
                     ("the output", "is the imatrix file"), code="AQ702", frozen=(tmp,)),
            Scenario(["apply", str(evaluation), "-o", str(tmp / "out.gguf"), "--report", str(tmp / "e.txt")],
                     OutputError, ("report (--report)", "evaluation text file (evaluation.text)"), code="AQ702",
                     frozen=(tmp,)),
            Scenario(["imatrix", "compute", str(model()), "--source", "text", "--text", str(tmp / "calib.dat"),
                      "-o", str(tmp / "calib.dat"), *CALIB], OutputError,
                     ("imatrix output (-o)", "is the calibration text (--text)"), code="AQ702", frozen=(tmp,))]


def output_symlink_to_input(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    m = _model_copy(tmp, model)
    (tmp / "link.gguf").symlink_to(m / "model.safetensors")
    recipe = write_recipe(tmp, "r.yaml", m)
    os.link(recipe, tmp / "hard.json")
    im = save_imatrix(tiny_imatrix(), tmp / "im.gguf")
    (tmp / "alias.dat").symlink_to(im)
    return [Scenario(_quantize(m, tmp / "link.gguf"), OutputError,
                     ("link.gguf (a symlink to", "model.safetensors", "model's own files"), code="AQ702",
                     frozen=(tmp,)),
            Scenario(["apply", str(recipe), "-o", str(tmp / "out.gguf"), "--report", str(tmp / "hard.json")],
                     OutputError, ("hard.json is a hard link of the recipe",), code="AQ702", frozen=(tmp,)),
            Scenario(["imatrix", "convert", str(im), str(tmp / "alias.dat")], OutputError,
                     ("destination", "is a symlink to the source imatrix"), code="AQ702", frozen=(tmp,))]


def output_clashes_with_output(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    out = tmp / "x.gguf"
    save = write_recipe(tmp, "s.yaml", model(), "imatrix: {type: compute, save: x.gguf}\n")
    recipe = write_recipe(tmp, "r.yaml", model())
    (tmp / "w").mkdir()
    return [Scenario(["apply", str(recipe), "-o", str(out), "--report", str(out)], OutputError,
                     ("the output and the report (--report) are the same path",), code="AQ702", frozen=(tmp,)),
            Scenario(["apply", str(save), "-o", str(out)], OutputError,
                     ("imatrix save path (imatrix.save)", "same path"), code="AQ702", frozen=(tmp,)),
            Scenario(_quantize(model(), tmp / "w" / "x.gguf", "--work-dir", str(tmp / "w")), OutputError,
                     ("lies inside the work folder",), code="AQ702", frozen=(tmp,))]


def output_special_file(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    os.mkfifo(tmp / "fifo.gguf")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp / "s.gguf"))  # stays a socket file after close; tmp_path removes it
    sock.close()
    cases = [Scenario(_quantize(model(), tmp / "fifo.gguf"), OutputError, ("is a FIFO", "replace that FIFO"),
                      code="AQ703", frozen=(tmp,)),
             Scenario(_quantize(model(), tmp / "s.gguf"), OutputError, ("is a socket",), code="AQ703", frozen=(tmp,)),
             Scenario(_quantize(model(), tmp / "out.gguf", "--report", "/sys/aqrecipe-report.json"), OutputError,
                      ("report (--report)", "lies under /sys"), code="AQ703", frozen=(tmp,))]
    try:  # a copy of /dev/null's node (as root, -o /dev/null itself would have replaced the device)
        os.mknod(tmp / "null.gguf", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        return cases
    return [*cases, Scenario(_quantize(model(), tmp / "null.gguf"), OutputError, ("is a character device",),
                             code="AQ703", frozen=(tmp,))]


def output_folder_holds_input(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    m = _model_copy(tmp, model)
    (tmp / "rs").mkdir()
    recipe = write_recipe(tmp / "rs", "r.yaml", m)
    return [Scenario(["apply", str(recipe), "-o", f"{tmp / 'rs'}/"], OutputError,
                     ("the output", "holds the recipe", "replaces that folder"), code="AQ702", frozen=(tmp,)),
            Scenario(_quantize(m, tmp / "out.gguf", "--work-dir", str(m)), OutputError,
                     ("work folder", "is the model folder"), code="AQ702", frozen=(tmp,)),
            Scenario(_quantize(m, tmp / "out.gguf", "--work-dir", str(tmp)), OutputError,
                     ("work folder", "holds the model folder", "creates and removes files"), code="AQ702",
                     frozen=(tmp,))]


def work_dir_not_ours(tmp: Path, model: Callable[[], Path]) -> Scenario:
    (tmp / "project" / "output").mkdir(parents=True)
    (tmp / "project" / "output" / "notes.txt").write_text("a user's file that a run would have deleted\n")
    return Scenario(_quantize(model(), tmp / "out.gguf", "--work-dir", str(tmp / "project")), OutputError,
                    ("project exists and was not made by aqrecipe", "output"), code="AQ704", frozen=(tmp,))


# --- whole-file reads: special files refused unread, sizes checked before reading ---------
def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that takes no disk space (nothing of it may be read)."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def read_recipe_special(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    os.mkfifo(tmp / "fifo.yaml")
    (tmp / "folder.yaml").mkdir()
    return [Scenario(["validate", "/dev/zero"], RecipeError, ("R002", "'/dev/zero' is a character device")),
            Scenario(["validate", str(tmp / "fifo.yaml")], RecipeError, ("R002", "is a FIFO")),
            Scenario(["apply", str(tmp / "fifo.yaml"), "-o", str(tmp / "o.gguf")], RecipeError, ("is a FIFO",),
                     (tmp / "o.gguf",)),
            Scenario(["compile", str(tmp / "folder.yaml")], RecipeError, ("R002", "is a folder"))]


def read_recipe_too_large(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    big = _sparse(tmp / "big.yaml", (1 << 20) + 1, b"version: 1\n")
    return [Scenario(["validate", str(big)], RecipeError,
                     ("R002", "big.yaml", "is 1048577 bytes", "at most 1048576 bytes")),
            Scenario(["validate", "/proc/self/maps"], RecipeError,
                     ("holds more than 4096 bytes although its size says 0",),
                     env=(("AQRECIPE_READ_LIMIT_RECIPE", "4KiB"),))]


def read_plan_special_or_large(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    os.mkfifo(tmp / "fifo.json")
    big = _sparse(tmp / "big.json", 300 << 20, b'{"version": 1, "entries": [')
    return [Scenario(["apply", str(tmp / "fifo.json"), "-o", str(tmp / "o.gguf")], PlanError,
                     ("plan file", "is a FIFO"), (tmp / "o.gguf",)),
            Scenario(["apply", str(big), "-o", str(tmp / "o.gguf")], PlanError,
                     ("big.json", "is 314572800 bytes (300.0 MiB)", "at most 268435456 bytes (256.0 MiB)"),
                     (tmp / "o.gguf",))]


def read_imatrix_special_or_large(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    os.mkfifo(tmp / "fifo.dat")
    big = _sparse(tmp / "big.dat", (4 << 30) + 1, struct.pack("<i", 1))
    return [Scenario(["imatrix", "show", "/dev/zero"], ImatrixError, ("is a character device",)),
            Scenario(["imatrix", "show", str(tmp / "fifo.dat")], ImatrixError, ("fifo.dat", "is a FIFO")),
            Scenario(["imatrix", "convert", str(big), str(tmp / "o.gguf")], ImatrixError,
                     ("big.dat", "is 4294967297 bytes", "imatrix files may have at most 4294967296 bytes"),
                     (tmp / "o.gguf",))]


def read_text_special_or_large(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    os.mkfifo(tmp / "fifo.txt")
    big = _sparse(tmp / "big.txt", 300 << 20, b"prose ")
    return [Scenario(_compute(tmp, model, "text", tmp / "fifo.txt"), CalibrationDataError,
                     ("fifo.txt", "is a FIFO"), (tmp / "im.gguf",)),
            Scenario(_compute(tmp, model, "jsonl", Path("/dev/zero")), CalibrationDataError,
                     ("'/dev/zero' is a character device",), (tmp / "im.gguf",)),
            Scenario(_compute(tmp, model, "text", big), CalibrationDataError,
                     ("big.txt", "is 314572800 bytes", "text files may have at most"), (tmp / "im.gguf",))]


def read_model_json_too_large(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    m = _model_copy(tmp, model)
    _sparse(m / "config.json", 200 << 20, (m / "config.json").read_bytes()[:-1])  # still "{...", then NULs
    other = tmp / "other"
    shutil.copytree(model(), other)
    _sparse(other / "tokenizer_config.json", 200 << 20, b"{")
    words = ("is 209715200 bytes", "a model folder's JSON files may have at most 134217728 bytes")
    return [Scenario(_quantize(m, tmp / "o.gguf"), ModelError, ("config.json", *words), (tmp / "o.gguf",)),
            Scenario(_quantize(other, tmp / "o.gguf"), ModelError, ("tokenizer_config.json", *words),
                     (tmp / "o.gguf",))]


BUILDERS: dict[str, Builder] = {
    "gguf-bad-magic": gguf_bad_magic,
    "gguf-truncated-tensor": gguf_truncated_tensor,
    "gguf-unknown-type-id": gguf_unknown_type_id,
    "gguf-bad-version": gguf_bad_version,
    "gguf-huge-count": gguf_huge_count,
    "gguf-empty-file": gguf_empty_file,
    "gguf-eval-truncated": gguf_eval_truncated,
    "imatrix-truncated-gguf": imatrix_truncated_gguf,
    "imatrix-truncated-dat": imatrix_truncated_dat,
    "imatrix-other-model": imatrix_other_model,
    "imatrix-non-finite": imatrix_non_finite,
    "imatrix-negative": imatrix_negative,
    "imatrix-wrong-extension-or-format": imatrix_wrong_format,
    "calib-empty-text": calib_empty_text,
    "calib-binary-text": calib_binary_text,
    "calib-too-short": calib_too_short,
    "calib-jsonl-missing-field": calib_jsonl_missing_field,
    "calib-jsonl-bad-line": calib_jsonl_bad_line,
    "recipe-model-missing": recipe_model_missing,
    "recipe-imatrix-file-missing": recipe_imatrix_file_missing,
    "recipe-calib-text-missing": recipe_calib_text_missing,
    "recipe-eval-text-missing": recipe_eval_text_missing,
    "recipe-planner-infeasible": recipe_planner_infeasible,
    "recipe-stale-plan": recipe_stale_plan,
    "recipe-plan-not-json": recipe_plan_not_json,
    "output-over-model-file": output_over_model_file,
    "output-over-gguf-model": output_over_gguf_model,
    "output-over-recipe": output_over_recipe,
    "output-over-input-file": output_over_input_file,
    "output-symlink-to-input": output_symlink_to_input,
    "output-clashes-with-output": output_clashes_with_output,
    "output-special-file": output_special_file,
    "output-folder-holds-input": output_folder_holds_input,
    "work-dir-not-ours": work_dir_not_ours,
    "read-recipe-special": read_recipe_special,
    "read-recipe-too-large": read_recipe_too_large,
    "read-plan-special-or-large": read_plan_special_or_large,
    "read-imatrix-special-or-large": read_imatrix_special_or_large,
    "read-text-special-or-large": read_text_special_or_large,
    "read-model-json-too-large": read_model_json_too_large,
}


def scenarios(case_id: str, tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    built = BUILDERS[case_id](tmp, model)
    return built if isinstance(built, list) else [built]


# --- tests -----------------------------------------------------------------------------
def test_every_case_has_a_builder() -> None:
    assert sorted(BUILDERS) == sorted(CASES)


# Known defects, each a strict xfail so that the fix shows up as XPASS (then remove it here).
KNOWN_BROKEN: dict[str, str] = {}


@pytest.mark.parametrize("case_id", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[c])) if c in KNOWN_BROKEN else c
    for c in sorted(CASES)])
def test_bad_input(case_id: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    for s in scenarios(case_id, tmp_path, lambda: request.getfixturevalue("tiny_llama_dir")):
        check(s)


# --- apply's pre-flight: input files are checked before any work ----------------------
PREFLIGHT = {  # a recipe section naming a bad input file -> (error, key words)
    "imatrix-file": ("imatrix: {type: file, path: missing.imatrix.gguf}\n", ImatrixError,
                     ("missing.imatrix.gguf", "does not exist")),
    "imatrix-folder": ("imatrix: {type: file, path: sub}\n", ImatrixError, ("sub", "is not a file")),
    "calib-text": ("imatrix:\n  type: compute\n  calibration:\n    source: {type: text, path: missing.txt}\n",
                   CalibrationDataError, ("missing.txt", "does not exist")),
    "calib-jsonl": ("imatrix:\n  type: compute\n  calibration:\n    source: {type: jsonl, path: c.jsonl}\n",
                    CalibrationDataError, ("c.jsonl", "does not exist")),
    "calib-text-empty": ("imatrix:\n  type: compute\n  calibration:\n    source: {type: text, path: empty.txt}\n",
                         CalibrationDataError, ("empty.txt", "is empty")),
    "eval-text": ("evaluation: {enabled: true, text: missing-eval.txt, chunks: 1, context: 16}\n",
                  CalibrationDataError, ("missing-eval.txt", "does not exist")),
    "eval-text-binary": ("evaluation: {enabled: true, text: nul.txt, chunks: 1, context: 16}\n",
                         CalibrationDataError, ("nul.txt", "binary")),
}


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the work folder's lock or packing a tensor fails the test."""
    from aqrecipe.apply import run as apply

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("apply started working before refusing the input file")

    monkeypatch.setattr(apply, "locked_work_dir", started)
    monkeypatch.setattr(apply, "write_plan_gguf", started)


@pytest.mark.parametrize("name", sorted(PREFLIGHT))
def test_bad_input_file_is_refused_before_any_work(name: str, tmp_path: Path, tiny_llama_dir: Path,
                                                   no_work: None) -> None:
    """No stage runs, no work folder or lock is created, nothing is written beside the recipe."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nul.txt").write_bytes(b"ids \x00\x01 " * 400)
    section, error, words = PREFLIGHT[name]
    recipe = write_recipe(tmp_path, "r.yaml", tiny_llama_dir, section)
    before = {p.name for p in tmp_path.iterdir()}
    check(_apply(tmp_path, recipe, error, words))
    assert {p.name for p in tmp_path.iterdir()} == before  # no .aqrecipe-work, no output, no temp file


@pytest.mark.parametrize("command", ["quantize", "apply"])
def test_missing_imatrix_flag_is_refused_before_any_work(command: str, tmp_path: Path, tiny_llama_dir: Path,
                                                         no_work: None) -> None:
    dest, target = tmp_path / "out" / "out.gguf", str(tiny_llama_dir)
    dest.parent.mkdir()
    if command == "apply":
        target = str(write_recipe(tmp_path, "r.yaml", tiny_llama_dir))
    argv = [command, target, "-o", str(dest), "--imatrix", str(tmp_path / "no.dat")]
    argv[2:2] = ["--type", "Q8_0"] if command == "quantize" else []
    outcome = check(Scenario(argv, ImatrixError, ("no.dat", "does not exist"), (dest,)))
    assert "--imatrix" in outcome.error["hint"]
    assert list(dest.parent.iterdir()) == []


def test_preflight_checks_only_the_files_the_run_reads(tmp_path: Path) -> None:
    """--no-eval skips the evaluation text, --imatrix replaces the recipe's imatrix and calibration."""
    from aqrecipe.apply.options import ApplyOptions
    from aqrecipe.apply.preflight import used_inputs
    from aqrecipe.recipe import load_recipe

    compute = ("imatrix:\n  type: compute\n  calibration:\n    source: {type: text, path: c.txt}\n"
               "evaluation: {enabled: true, text: e.txt}\n")
    recipe = load_recipe(write_recipe(tmp_path, "r.yaml", "demo", compute))
    kinds = lambda **kw: [(f.kind, f.path.name) for f in used_inputs(recipe, ApplyOptions(**kw))]  # noqa: E731
    assert kinds() == [("text", "c.txt"), ("evaluation", "e.txt")]
    assert kinds(evaluate=False) == [("text", "c.txt")]
    assert kinds(imatrix_path=Path("i.gguf"), evaluate=False) == [("imatrix", "i.gguf")]
    assert kinds(imatrix_path=None, evaluate=True) == [("text", "c.txt"), ("evaluation", "e.txt")]
    recipe = load_recipe(write_recipe(tmp_path, "f.yaml", "demo", "imatrix: {type: file, path: sub/i.dat}\n"))
    assert [(f.kind, f.path) for f in used_inputs(recipe, ApplyOptions())] == [("imatrix", tmp_path / "sub" / "i.dat")]
    assert used_inputs(None, ApplyOptions()) == []


def test_huge_counts_are_refused_before_allocation(tmp_path: Path) -> None:
    for s in gguf_huge_count(tmp_path, lambda: tmp_path):
        tracemalloc.start()
        try:
            check(s)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 32 << 20, f"{s.argv}: {peak} bytes allocated"


def test_subprocess_prints_message_and_exits_2(tmp_path: Path) -> None:
    """The installed entry point: message and hint on stderr, exit code 2, no traceback."""
    bad = patched(model_gguf(tmp_path), tmp_path / "bad.gguf", 4, "<I", 99)
    proc = subprocess.run([sys.executable, "-m", "aqrecipe.cli", "inspect", str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USER_ERROR
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error[{GGUFFormatError.code}]: ") and "version 99" in proc.stderr
    assert "\n  hint: " in proc.stderr


# --- docs ------------------------------------------------------------------------------
def print_messages() -> None:  # pragma: no cover - a helper for docs/errors.md
    """Print each case's first scenario's message, as the CLI prints it, as a table row."""
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_docs import print_case_rows

    print_case_rows(CASES, scenarios, lambda s, printed: (
        f"`{s.error.__name__}`", [ln for ln in printed if ln.startswith(("error[", "  hint:"))]))


if __name__ == "__main__":  # pragma: no cover
    print_messages()
