"""Bad-input corpus, part A (issue #8): model folders and output paths.

Every case runs the real CLI (``aqrecipe quantize MODEL --type Q8_0 -o OUT``) on a
broken copy of the tiny llama model or with a bad output path, and checks: the
error class, the message's key words, exit code 2, no traceback, and that no
output appears (destination absent, nothing left in its folder).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.cli import commands as cli
from aqrecipe.errors import (
    EXIT_USER_ERROR,
    AqrecipeError,
    CorruptFileError,
    ModelError,
    NonFiniteWeightError,
    OutputError,
    UnsupportedArchitectureError,
    UnsupportedDtypeError,
)
from aqrecipe.models.safetensors_io import read_header

CASES = {
    "model-missing-shard": "the shard index names a shard file that is absent",
    "model-truncated-safetensors": "a safetensors file cut short: data_offsets run past the end of the file",
    "model-lying-header": "header offsets that contradict themselves (end < begin, overlap, size != shape x dtype, past EOF)",
    "model-huge-header": "the 8-byte header length is absurd (2**60, larger than the file)",
    "model-header-not-json": "the header bytes are not UTF-8 / not JSON / not a JSON object",
    "model-unsupported-dtype": "a weight stored as I32 / F8_E4M3 / BOOL instead of a float type",
    "model-nan-weights": "a weight holds NaN: the message names the tensor, row and column",
    "model-inf-weights": "a weight holds +Inf or -Inf: the message names the tensor, row and column",
    "model-config-mismatch": "config.json's sizes disagree with the tensor shapes",
    "model-unknown-architecture": "config.json names an architecture aqrecipe does not support (FooForCausalLM)",
    "model-no-config": "the model folder has no config.json",
    "model-bad-config-json": "config.json is not JSON",
    "model-pickle-only": "the folder holds only pytorch_model.bin (a pickle, never loaded)",
    "model-deep-json": "config.json or a safetensors header nested thousands of levels deep",
    "model-header-odd-types": "a header dtype that is a list; an index weight_map with integer values",
    "model-tensor-in-two-shards": "the same tensor stored in two shards",
    "model-absurd-config": "config.json sizes or flags of the wrong type or absurd size (1e30, \"false\")",
    "model-config-contradiction": "config.json contradicts itself or the weights (tied head with its own lm_head, rope_parameters vs rope_scaling)",
    "model-tokenizer": "tokenizer files missing, not UTF-8, not JSON, or not a JSON object",
    "model-weight-beyond-f16": "a finite weight too large for the requested F16 type (it would become Inf)",
    "output-missing-folder": "-o names a file in a folder that does not exist",
    "output-readonly-folder": "-o names a file in a folder that cannot be written",
    "output-disk-full": "the disk (here: the file-size limit) fills up while the GGUF is written",
    "output-is-directory": "-o names an existing directory",
}

ST = "model.safetensors"
WORK_DIR = ".aqrecipe-work"  # apply's default work folder, beside the output


# --- safetensors surgery ------------------------------------------------------------
def load_st(path: Path) -> tuple[dict, bytes]:
    """(header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def save_st(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_header(folder: Path, change: Callable[[dict], None]) -> None:
    header, data = load_st(folder / ST)
    change(header)
    save_st(folder / ST, header, data)


def set_value(folder: Path, name: str, row: int, col: int, value: float) -> None:
    """Overwrite one F32 weight in place (HF orientation [out, in])."""
    header, data = load_st(folder / ST)
    entry = header[name]
    assert entry["dtype"] == "F32"
    begin, end = entry["data_offsets"]
    values = np.frombuffer(data[begin:end], dtype="<f4").reshape(entry["shape"]).copy()
    values[row, col] = value
    save_st(folder / ST, header, data[:begin] + values.tobytes() + data[end:])


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


# --- the broken models ---------------------------------------------------------------
def missing_shard(folder: Path) -> None:
    header, _ = load_st(folder / ST)
    (folder / ST).rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {name: "model-00001-of-00002.safetensors" for name in header if name != "__metadata__"}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def truncated(folder: Path) -> None:
    raw = (folder / ST).read_bytes()
    (folder / ST).write_bytes(raw[: len(raw) // 2])


def end_before_begin(folder: Path) -> None:
    def change(h: dict) -> None:
        h["model.norm.weight"]["data_offsets"].reverse()

    edit_header(folder, change)


def overlapping(folder: Path) -> None:
    # k_proj and v_proj have the same shape: pointing v at k's bytes keeps every size right.
    def change(h: dict) -> None:
        h["model.layers.0.self_attn.v_proj.weight"]["data_offsets"] = list(
            h["model.layers.0.self_attn.k_proj.weight"]["data_offsets"]
        )

    edit_header(folder, change)


def size_not_shape(folder: Path) -> None:
    def change(h: dict) -> None:
        h["model.layers.1.mlp.down_proj.weight"]["shape"] = [64, 64]  # 96 columns stored

    edit_header(folder, change)


def past_eof(folder: Path) -> None:
    header, data = load_st(folder / ST)
    entry = header["model.norm.weight"]
    begin, end = entry["data_offsets"]
    entry["data_offsets"] = [len(data) + 64, len(data) + 64 + (end - begin)]
    save_st(folder / ST, header, data)


def header_len(value: int) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        raw = (folder / ST).read_bytes()
        (folder / ST).write_bytes(struct.pack("<Q", value) + raw[8:])

    return corrupt


def header_bytes(make: Callable[[int], bytes]) -> Callable[[Path], None]:
    """Replace the header by ``make(n)`` (n = its length), keeping the length field."""

    def corrupt(folder: Path) -> None:
        raw = (folder / ST).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        fresh = make(n)
        assert len(fresh) == n
        (folder / ST).write_bytes(raw[:8] + fresh + raw[8 + n :])

    return corrupt


def stored_as(name: str, dtype: str, shape: list[int]) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        def change(h: dict) -> None:
            h[name]["dtype"], h[name]["shape"] = dtype, shape

        edit_header(folder, change)

    return corrupt


def value_at(name: str, row: int, col: int, value: float) -> Callable[[Path], None]:
    return lambda folder: set_value(folder, name, row, col, value)


def norm_value(index: int, value: float) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        header, data = load_st(folder / ST)
        begin, end = header["model.layers.1.post_attention_layernorm.weight"]["data_offsets"]
        values = np.frombuffer(data[begin:end], dtype="<f4").copy()
        values[index] = value
        save_st(folder / ST, header, data[:begin] + values.tobytes() + data[end:])

    return corrupt


def config_change(**changes: object) -> Callable[[Path], None]:
    return lambda folder: edit_config(folder, **changes)


def deep_config(folder: Path) -> None:
    text = (folder / "config.json").read_text().rstrip()
    (folder / "config.json").write_text(text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")


def deep_header(folder: Path) -> None:
    header, data = load_st(folder / ST)
    text = json.dumps(header)[:-1] + ', "__x__": ' + "[" * 100_000 + "]" * 100_000 + "}"
    raw = text.encode() + b" " * (-len(text) % 8)
    (folder / ST).write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def index_with_int_shards(folder: Path) -> None:
    names = list(load_st(folder / ST)[0])
    index = {"metadata": {}, "weight_map": {n: 1 for n in names if n != "__metadata__"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def tensor_in_two_shards(folder: Path) -> None:
    header, data = load_st(folder / ST)
    name = "model.norm.weight"
    begin, end = header[name]["data_offsets"]
    save_st(folder / "extra.safetensors", {name: {**header[name], "data_offsets": [0, end - begin]}}, data[begin:end])
    index = {"metadata": {}, "weight_map": {**{n: ST for n in header if n != "__metadata__"}}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    index["weight_map"][name] = "extra.safetensors"  # the index names one, both hold it
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def tokenizer_bytes(raw: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / "tokenizer.json").write_bytes(raw)


def no_tokenizer(folder: Path) -> None:
    for path in folder.glob("tokenizer*"):
        path.unlink()


def no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def bad_config(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,,}')


class _TouchOnLoad:
    """Unpickling this creates the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_only(folder: Path) -> None:
    (folder / ST).unlink()
    marker = folder.parent / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _TouchOnLoad(marker)}))


@dataclass(frozen=True)
class Case:
    id: str
    corrupt: Callable[[Path], None]
    error: type[AqrecipeError]
    words: tuple[str, ...]  # must all appear in stderr (case-insensitive)


Q = "model.layers.0.self_attn.q_proj.weight"
K = "model.layers.0.self_attn.k_proj.weight"
DOWN = "model.layers.1.mlp.down_proj.weight"
EMBED = "model.embed_tokens.weight"
FOO = "FooForCausalLM"
BadArch = UnsupportedArchitectureError

MODEL_CASES = [
    Case("model-missing-shard", missing_shard, ModelError, ("model-00002-of-00002.safetensors", "missing")),
    Case("model-truncated-safetensors", truncated, CorruptFileError, ("truncated", ST)),
    Case("model-lying-header-end-before-begin", end_before_begin, CorruptFileError, ("model.norm.weight", "before")),
    Case("model-lying-header-overlap", overlapping, CorruptFileError, ("overlap", "v_proj", "k_proj")),
    Case("model-lying-header-size-not-shape", size_not_shape, CorruptFileError, ("down_proj", "24576", "16384")),
    Case("model-lying-header-past-eof", past_eof, CorruptFileError, ("model.norm.weight", "outside")),
    Case("model-huge-header-2pow60", header_len(2**60), CorruptFileError, (str(2**60), "header")),
    Case("model-huge-header-past-file", header_len(10**8), CorruptFileError, ("100000000", "header")),
    Case("model-header-not-json-utf8", header_bytes(lambda n: b"\xff" * n), CorruptFileError, ("not valid json", ST)),
    Case("model-header-not-json-text", header_bytes(lambda n: b"{" + b" " * (n - 1)), CorruptFileError, ("not valid json",)),
    Case("model-header-not-json-object", header_bytes(lambda n: b"[1]" + b" " * (n - 3)), CorruptFileError, ("not a json object",)),
    Case("model-unsupported-dtype-i32", stored_as(K, "I32", [32, 64]), UnsupportedDtypeError, ("k_proj", "I32", "F32")),
    Case("model-unsupported-dtype-f8", stored_as("model.norm.weight", "F8_E4M3", [256]), UnsupportedDtypeError, ("model.norm.weight", "F8_E4M3")),
    Case("model-unsupported-dtype-bool", stored_as("model.norm.weight", "BOOL", [256]), UnsupportedDtypeError, ("BOOL",)),
    Case("model-nan-weights-down", value_at(DOWN, 5, 7, math.nan), NonFiniteWeightError, (DOWN, "nan", "row 5", "column 7")),
    # q/k rows are permuted for llama.cpp: the message must still give the HF row.
    Case("model-nan-weights-q-permuted", value_at(Q, 3, 9, math.nan), NonFiniteWeightError, (Q, "nan", "row 3", "column 9")),
    Case("model-nan-weights-f32-norm", norm_value(11, math.nan), NonFiniteWeightError, ("post_attention_layernorm", "nan", "11")),
    Case("model-inf-weights-k", value_at(K, 17, 2, math.inf), NonFiniteWeightError, (K, "inf", "row 17", "column 2")),
    Case("model-inf-weights-embed", value_at(EMBED, 300, 63, -math.inf), NonFiniteWeightError, (EMBED, "-inf", "row 300", "column 63")),
    Case("model-config-mismatch-hidden", config_change(hidden_size=128), ModelError, ("hidden_size", "128", "64")),
    Case("model-config-mismatch-ffn", config_change(intermediate_size=128), ModelError, ("intermediate_size", "128", "96")),
    Case("model-config-mismatch-layers-3", config_change(num_hidden_layers=3), ModelError, ("num_hidden_layers", "3", "layer 2")),
    Case("model-config-mismatch-layers-1", config_change(num_hidden_layers=1), ModelError, ("num_hidden_layers", "1", "2 layers")),
    Case("model-config-mismatch-heads", config_change(num_key_value_heads=4), ModelError, ("num_key_value_heads", "k_proj")),
    Case("model-unknown-architecture", config_change(model_type="foo", architectures=[FOO]), BadArch, ("foo", FOO, "llama")),
    Case("model-unknown-architecture-class-only", config_change(model_type=None, architectures=[FOO]), BadArch, (FOO,)),
    Case("model-no-config", no_config, ModelError, ("config.json",)),
    Case("model-deep-json-config", deep_config, CorruptFileError, ("config.json", "nested too deeply")),
    Case("model-deep-json-header", deep_header, CorruptFileError, (ST, "nested too deeply")),
    Case("model-header-odd-types-dtype-list", stored_as("model.norm.weight", ["F32"], [64]), CorruptFileError,
         ("model.norm.weight", "not a dtype name")),
    Case("model-header-odd-types-int-shards", index_with_int_shards, CorruptFileError, ("index", "weight_map")),
    Case("model-tensor-in-two-shards", tensor_in_two_shards, CorruptFileError, ("model.norm.weight", "two shards")),
    Case("model-absurd-config-1e30", config_change(max_position_embeddings=1e30), ModelError,
         ("max_position_embeddings", "1e+30", "positive integer")),
    Case("model-absurd-config-huge-int", config_change(intermediate_size=10**40), ModelError, ("intermediate_size",)),
    # 0 is transformers 5's "off" only beside use_sliding_window: false (Qwen2-MoE writes that pair)
    Case("model-absurd-config-sliding-window-zero", config_change(sliding_window=0, use_sliding_window=True),
         ModelError, ("sliding_window", "positive integer")),
    Case("model-absurd-config-string-flag", config_change(tie_word_embeddings="false"), ModelError,
         ("tie_word_embeddings", "'false'", "without quotes")),
    Case("model-config-contradiction-tied-head", config_change(tie_word_embeddings=True), ModelError,
         ("tie_word_embeddings", "lm_head.weight")),
    Case("model-config-contradiction-rope", config_change(rope_scaling={"rope_type": "linear", "factor": 2.0},
                                                          rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
         ModelError, ("rope_parameters", "rope_scaling", "linear")),
    Case("model-tokenizer-missing", no_tokenizer, ModelError, ("no tokenizer", "llama.cpp")),
    Case("model-tokenizer-not-utf8", tokenizer_bytes(b"\xff\xfe{}"), CorruptFileError, ("tokenizer.json", "not utf-8")),
    Case("model-tokenizer-not-json", tokenizer_bytes(b"{not json"), CorruptFileError, ("tokenizer.json", "not valid json")),
    Case("model-tokenizer-list", tokenizer_bytes(b"[1, 2, 3]"), CorruptFileError, ("tokenizer.json", "not a json object")),
    Case("model-bad-config-json", bad_config, CorruptFileError, ("config.json", "not valid json")),
    Case("model-pickle-only", pickle_only, ModelError, ("pytorch_model.bin", "pickle", "never", "safetensors")),
]


# --- running the CLI --------------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    err: str
    exc: AqrecipeError | None


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """main(argv) in-process, keeping the exception the CLI printed."""
    seen: list[AqrecipeError] = []
    original = cli._print_error

    def spy(exc: AqrecipeError, as_json: bool) -> None:
        seen.append(exc)
        original(exc, as_json)

    monkeypatch.setattr(cli, "_print_error", spy)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    return Outcome(code, err, seen[0] if seen else None)


def assert_refused(outcome: Outcome, error: type[AqrecipeError], words: tuple[str, ...]) -> None:
    assert outcome.code == EXIT_USER_ERROR, outcome.err
    assert "Traceback" not in outcome.err
    assert type(outcome.exc) is error, (type(outcome.exc), outcome.err)
    assert f"error[{error.code}]" in outcome.err
    printed = error_text(outcome.err)  # the message and hint, not the log lines before them
    for word in words:
        assert word.lower() in printed.lower(), (word, outcome.err)


def error_text(stderr: str) -> str:
    assert "error[" in stderr, stderr
    return stderr[stderr.index("error[") :]


def assert_no_output(folder: Path, dest: Path, *, work_folder_ok: bool = True) -> None:
    """Destination absent; no temp or partial output anywhere in its folder.

    The apply work folder (checkpoints, lock) may stay where work was done: it is what
    a rerun resumes from. A bad output path is refused before it exists (``work_folder_ok=False``).
    """
    assert not dest.exists()
    assert {p.name for p in folder.iterdir()} <= ({WORK_DIR} if work_folder_ok else set())
    leftovers = [p for p in folder.rglob("*") if p.is_file() and p.name.startswith(dest.name)]
    assert leftovers == []


def quantize_argv(model: Path, dest: Path) -> list[str]:
    return ["quantize", str(model), "--type", "Q8_0", "-o", str(dest)]


@pytest.fixture
def model_copy(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def refused_before_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the work folder's lock (the first thing apply creates) fails the test."""
    from aqrecipe.apply import run

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("apply took the work folder's lock before checking the output path")

    monkeypatch.setattr(run, "locked_work_dir", started)


_OUTPUT_IDS: set[str] = set()


def output_case(case_id: str) -> pytest.MarkDecorator:
    """Puts a CASES id into the test's node id, e.g. ``test_output_is_directory[output-is-directory]``."""
    assert case_id.split("-tmpfs")[0] in CASES
    _OUTPUT_IDS.add(case_id)
    return pytest.mark.parametrize("case_id", [case_id])


# --- model cases ------------------------------------------------------------------------
def test_every_case_id_is_tested() -> None:
    tested = {c.id for c in MODEL_CASES} | _OUTPUT_IDS | {"model-weight-beyond-f16"}
    for case_id in CASES:
        assert any(t == case_id or t.startswith(case_id + "-") for t in tested), case_id


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.id for c in MODEL_CASES])
def test_bad_model_is_refused(
    case: Case, model_copy: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case.corrupt(model_copy)
    dest = out_dir / "model.gguf"
    outcome = run_cli(quantize_argv(model_copy, dest), capsys, monkeypatch)
    assert_refused(outcome, case.error, case.words)
    assert outcome.exc is not None and outcome.exc.hint  # every refusal says how to fix it
    assert_no_output(out_dir, dest)
    assert not (model_copy.parent / "UNPICKLED").exists()  # no pickle was ever loaded


def test_model_weight_beyond_f16_names_the_tensor(
    model_copy: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aqrecipe.errors import CodecError

    value_at(DOWN, 5, 7, 1e6)(model_copy)
    dest = out_dir / "model.gguf"
    argv = ["quantize", str(model_copy), "--type", "F16", "-o", str(dest)]
    outcome = run_cli(argv, capsys, monkeypatch)
    assert_refused(outcome, CodecError, (DOWN, "F16", "row 5", "column 7", "BF16"))
    assert_no_output(out_dir, dest)


@pytest.mark.parametrize("length", [2**60, 200 * 1024 * 1024])
def test_model_huge_header_is_refused_before_allocating(model_copy: Path, length: int) -> None:
    header_len(length)(model_copy)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match="header claims"):
            read_header(model_copy / ST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_model_config_mismatch_lists_every_disagreement(
    model_copy: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    edit_config(model_copy, hidden_size=128, intermediate_size=80, vocab_size=500)
    dest = out_dir / "model.gguf"
    outcome = run_cli(quantize_argv(model_copy, dest), capsys, monkeypatch)
    assert_refused(outcome, ModelError, ("hidden_size", "intermediate_size", "vocab_size", "500", "49152", "80", "96"))
    assert_no_output(out_dir, dest)


# --- output cases -----------------------------------------------------------------------
@output_case("output-missing-folder")
def test_output_missing_folder(
    case_id: str, tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    refused_before_work: None,
) -> None:
    dest = tmp_path / "nonexistent" / "dir" / "out.gguf"
    outcome = run_cli(quantize_argv(tiny_llama_dir, dest), capsys, monkeypatch)
    assert_refused(outcome, OutputError, ("does not exist", "mkdir", str(dest.parent)))
    assert list(tmp_path.iterdir()) == []  # no folder created on the way, no work folder


def test_report_folder_missing_is_refused_before_any_work(
    tiny_llama_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    refused_before_work: None,
) -> None:
    dest, report = out_dir / "model.gguf", out_dir / "no" / "report.json"
    outcome = run_cli([*quantize_argv(tiny_llama_dir, dest), "--report", str(report)], capsys, monkeypatch)
    assert_refused(outcome, OutputError, ("does not exist", str(report.parent)))
    assert_no_output(out_dir, dest, work_folder_ok=False)


@output_case("output-is-directory")
def test_output_is_directory(
    case_id: str, tiny_llama_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    refused_before_work: None,
) -> None:
    dest = out_dir / "model.gguf"
    dest.mkdir()
    outcome = run_cli(quantize_argv(tiny_llama_dir, dest), capsys, monkeypatch)
    assert_refused(outcome, OutputError, ("is a folder", "file name"))
    assert dest.is_dir() and list(dest.iterdir()) == []
    assert [p.name for p in out_dir.iterdir()] == ["model.gguf"]  # refused before any work folder exists


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[str]:
    """Make ``folder`` unwritable even for root; yields the mechanism's name.

    Non-root: chmod. Root: the immutable attribute (chattr +i), else a read-only
    tmpfs mounted over the folder; skips only when neither is possible here.
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "chmod 555"
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") and _run(["chattr", "+i", str(folder)]):
        try:
            yield "chattr +i"
        finally:
            _run(["chattr", "-i", str(folder)])
        return
    if shutil.which("mount") and _run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]):
        try:
            yield "read-only tmpfs"
        finally:
            _run(["umount", str(folder)])
        return
    pytest.skip("no way to make a folder unwritable for root here (chattr +i and mount both refused)")


def _run(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


@output_case("output-readonly-folder")
def test_output_readonly_folder(
    case_id: str, tiny_llama_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    refused_before_work: None,
) -> None:
    dest = out_dir / "model.gguf"
    with unwritable(out_dir) as how:
        with pytest.raises(OSError):  # the mechanism really blocks this process
            (out_dir / "probe").write_bytes(b"x")
        outcome = run_cli(quantize_argv(tiny_llama_dir, dest), capsys, monkeypatch)
        assert_refused(outcome, OutputError, ("not writable", str(out_dir)))
        assert WORK_DIR not in error_text(outcome.err), how  # assert_refused already ruled out a traceback
    assert_no_output(out_dir, dest, work_folder_ok=False)


@output_case("output-readonly-folder")
def test_output_readonly_folder_access_lies(
    case_id: str, tiny_llama_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    refused_before_work: None,
) -> None:
    """os.access says yes (as for root on some mounts) but creating a file fails: the probe refuses."""
    from aqrecipe.formats import fileio

    monkeypatch.setattr(fileio.os, "access", lambda *args, **kwargs: True)
    dest = out_dir / "model.gguf"
    with unwritable(out_dir) as how:
        outcome = run_cli(quantize_argv(tiny_llama_dir, dest), capsys, monkeypatch)
        assert_refused(outcome, OutputError, ("not writable", str(out_dir), "hint:", "permissions"))
        assert WORK_DIR not in error_text(outcome.err), how  # not the raw error of creating the work folder
    assert_no_output(out_dir, dest, work_folder_ok=False)


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child: writes past `limit` fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@output_case("output-disk-full")
def test_output_disk_full(case_id: str, tiny_llama_dir: Path, out_dir: Path) -> None:
    dest = out_dir / "model.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "aqrecipe.cli", *quantize_argv(tiny_llama_dir, dest)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(64 * 1024),  # the Q8_0 file is about 125 KiB
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error[{OutputError.code}]" in proc.stderr
    printed = error_text(proc.stderr)
    staged = out_dir / WORK_DIR / dest.name / "output" / dest.name
    for word in ("file size limit", "65536 bytes", f"writing {dest} (staged in {staged})", "hint:", "ulimit"):
        assert word in printed, (word, proc.stderr)  # names the user's -o path first
    assert_no_output(out_dir, dest, work_folder_ok=False)  # nothing to resume from: the work folder is gone


@output_case("output-disk-full-tmpfs")
def test_output_disk_full_tmpfs(
    case_id: str, tiny_llama_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real full disk: a 64 KiB tmpfs (only where this test may mount one)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    if not _run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out_dir)]):
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        dest = out_dir / "model.gguf"
        outcome = run_cli(quantize_argv(tiny_llama_dir, dest), capsys, monkeypatch)
        assert_refused(outcome, OutputError, ("disk full", f"writing {dest} (staged in ", "free some space"))
        assert_no_output(out_dir, dest, work_folder_ok=False)
    finally:
        _run(["umount", str(out_dir)])


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "disk full"),
        (errno.EFBIG, "file size limit"),  # with a (huge) limit set below
        (errno.EACCES, "not writable"),
        (errno.EROFS, "not writable"),
    ],
)
@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged"])
def test_output_write_failure_names_the_cause(tmp_path: Path, code: int, words: str, staged: bool) -> None:
    """The message names the user's path; a file staged in a work folder is named by its destination."""
    from aqrecipe.formats.fileio import atomic_output, staged_for

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    dest = user_path = tmp_path / "out.bin"
    if staged:
        (tmp_path / "work").mkdir()
        dest, user_path = tmp_path / "work" / "out.bin", tmp_path / "final" / "out.bin"
    try:
        if code == errno.EFBIG:
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 40, limit[1]))
        with pytest.raises(OutputError, match=words) as exc:
            with staged_for(dest, user_path) if staged else contextlib.nullcontext():
                with atomic_output(dest) as fh:
                    fh.write(b"x")
                    raise OSError(code, os.strerror(code))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    message = exc.value.message
    assert exc.value.hint and str(user_path) in message
    if staged:
        assert f"{user_path} (staged in {dest}" in message and message.index(str(user_path)) < message.index(str(dest))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_output_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    from aqrecipe.formats.fileio import check_output_folder

    check_output_folder(tmp_path / "model.gguf", probe=True)
    (tmp_path / "hf").mkdir()
    check_output_folder(tmp_path / "hf", probe=True, folder_ok=True)
    assert [p.name for p in tmp_path.iterdir()] == ["hf"] and list((tmp_path / "hf").iterdir()) == []
    with pytest.raises(OutputError, match="is a folder"):
        check_output_folder(tmp_path / "hf", probe=True)


def test_os_error_about_another_file_is_not_blamed_on_the_output(tmp_path: Path) -> None:
    from aqrecipe.formats.fileio import atomic_output

    with pytest.raises(PermissionError):
        with atomic_output(tmp_path / "out.bin") as fh:
            fh.write(b"x")
            raise PermissionError(13, "Permission denied", str(tmp_path / "model.safetensors"))
    assert list(tmp_path.iterdir()) == []


def test_cli_turns_a_stray_os_error_into_a_message(
    tiny_llama_dir: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aqrecipe.models import ModelSource

    def unreadable(self: object, name: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "model.safetensors")

    monkeypatch.setattr(ModelSource, "read_for_gguf", unreadable)
    dest = out_dir / "model.gguf"
    outcome = run_cli(quantize_argv(tiny_llama_dir, dest), capsys, monkeypatch)
    assert outcome.code == EXIT_USER_ERROR and "Traceback" not in outcome.err
    assert type(outcome.exc) is AqrecipeError  # not blamed on the output
    assert "Permission denied: model.safetensors" in outcome.err and "hint:" in outcome.err
    assert_no_output(out_dir, dest)


def test_nan_weight_found_by_calibration_names_its_own_tensor(
    model_copy: Path, out_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_value(model_copy, DOWN, 5, 7, math.nan)  # layer 1's down_proj: its output poisons nothing after it
    set_value(model_copy, "model.layers.0.mlp.down_proj.weight", 3, 2, math.nan)  # layer 0's poisons layer 1
    argv = ["imatrix", "compute", str(model_copy), "-o", str(out_dir / "im.gguf"), "--samples", "128",
            "--seq-len", "16"]
    outcome = run_cli(argv, capsys, monkeypatch)
    assert_refused(outcome, NonFiniteWeightError, ("model.layers.0.mlp.down_proj.weight", "nan", "row 3", "column 2"))
    assert "blk.1" not in outcome.err  # not blamed on the next layer, whose input it poisons
