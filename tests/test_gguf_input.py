"""GGUF files as model input (issue 15, item 1): F32/F16/BF16, split parts, quantized input refused.

The fast tests use a tiny llama-shaped GGUF written with gguf-py (random weights, every kind of
metadata value); the slow ones the demo model's F16 GGUF against the HF folder it came from, and
llama.cpp loading what aqrecipe writes from it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe.cli.commands import main
from aqrecipe.errors import GGUFFormatError, ModelError
from aqrecipe.models import open_model
from aqrecipe.models.gguf_source import GGUFSource, gguf_file_metadata, open_gguf
from aqrecipe.models.protocol import WeightSource

QT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType
HIDDEN, FFN, LAYERS, VOCAB, N_HEAD, N_HEAD_KV = 256, 512, 2, 64, 4, 2  # 256: K-quants fit the rows
BAD_TOKEN = b"\xff\xfe"  # a vocabulary entry that is not UTF-8: carried over as bytes


# --- the tiny GGUF ------------------------------------------------------------------------------
def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """llama tensors in numpy order [rows, row_len], random, in an order unlike llama.cpp's."""
    rng = np.random.default_rng(seed)
    kv = N_HEAD_KV * HIDDEN // N_HEAD
    shapes: dict[str, tuple[int, ...]] = {"output.weight": (VOCAB, HIDDEN), "output_norm.weight": (HIDDEN,)}
    for i in reversed(range(LAYERS)):
        shapes.update({
            f"blk.{i}.ffn_down.weight": (HIDDEN, FFN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN), f"blk.{i}.attn_v.weight": (kv, HIDDEN),
            f"blk.{i}.attn_k.weight": (kv, HIDDEN), f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.attn_norm.weight": (HIDDEN,),
        })
    shapes["token_embd.weight"] = (VOCAB, HIDDEN)
    return {name: (rng.standard_normal(shape) * 0.05).astype(np.float32) for name, shape in shapes.items()}


def add_tiny_metadata(w: gguf.GGUFWriter, alignment: int | None) -> None:
    """llama.cpp's keys for the tiny model, plus one of every value type gguf can hold."""
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // N_HEAD)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB - 1)] + [BAD_TOKEN])
    w.add_token_types([int(gguf.TokenType.NORMAL)] * VOCAB)
    w.add_token_scores([float(-i) for i in range(VOCAB)])
    w.add_token_merges(["t 1", "t 2"])
    w.add_add_bos_token(False)
    w.add_eos_token_id(1)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    w.add_uint8("test.u8", 7)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", 0.1)
    w.add_array("test.bools", [True, False, True])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_key_value("test.empty", [], VT.ARRAY, sub_type=VT.INT32)  # dropped: gguf-py cannot write it
    w.add_string("quantize.imatrix.file", "old.dat")  # about the input's own quantization: dropped
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))


def _pack_val_allowing_empty(pack):  # gguf-py refuses to write an empty array; llama.cpp writes them
    def packed(self, val, vtype, add_vtype, sub_type=None):
        if vtype == VT.ARRAY and len(val) == 0:
            return (self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type) + self._pack("Q", 0)
        return pack(self, val, vtype, add_vtype, sub_type)
    return packed


def write_tiny(path: Path, dtype: str = "F16", *, split_max_tensors: int = 0, seed: int = 0) -> Path:
    """The tiny model as a GGUF: matrices in ``dtype`` (F32, F16, BF16 or a quantized type), norms F32.

    Single files use alignment 256, not the default 32, so offsets must follow the file's own
    alignment. Split parts keep 32: gguf-py writes the key into the first part only but pads
    every part to it, which makes the other parts unreadable (by llama.cpp too).
    """
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    w._pack_val = _pack_val_allowing_empty(gguf.GGUFWriter._pack_val).__get__(w)
    add_tiny_metadata(w, None if split_max_tensors else 256)
    for name, values in tiny_weights(seed).items():
        if values.ndim == 1 or dtype == "F32":
            w.add_tensor(name, values)
        elif dtype == "F16":
            w.add_tensor(name, values.astype(np.float16))
        else:
            w.add_tensor(name, encode(values, dtype), raw_dtype=QT[dtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """Raw bytes [rows, row_bytes]: gguf-py's encoder where it has one (BF16, Q8_0), else aqrecipe's codecs."""
    if dtype in ("BF16", "Q8_0"):
        return gguf.quants.quantize(values, QT[dtype])
    from aqrecipe.quant import codecs

    return codecs.quantize(values, dtype)


def stored_values(name: str, dtype: str) -> np.ndarray:
    """What a reader must return for tensor ``name`` of a ``write_tiny`` file: gguf-py's rounding."""
    values = tiny_weights()[name]
    if values.ndim == 1 or dtype == "F32":
        return values
    return gguf.quants.dequantize(encode(values, dtype), QT[dtype]).astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("tiny-f16") / "tiny-f16.gguf")


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("tiny-q8") / "tiny-q8.gguf", "Q8_0")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- opening: table, values, metadata -----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32"])
def test_table_and_values(tmp_path: Path, dtype: str) -> None:
    path = write_tiny(tmp_path / f"tiny-{dtype}.gguf", dtype)
    source = open_model(path)
    assert isinstance(source, GGUFSource) and isinstance(source, WeightSource)
    assert source.path == path and source.config == {} and source.hf_folder is None and source.tokenizer_dir is None
    weights = tiny_weights()
    names = [t.gguf_name for t in source.tensors]
    assert names[0] == "token_embd.weight" and names[-2:] == ["output_norm.weight", "output.weight"]
    assert names.index("blk.1.attn_k.weight") > names.index("blk.0.ffn_up.weight")  # by layer, not file order
    assert sorted(names) == sorted(weights)
    for info in source.tensors:
        assert info.hf_name == info.gguf_name and info.shape == weights[info.gguf_name].shape
        assert info.dtype == ("F32" if len(info.shape) == 1 else dtype)
        assert same_bits(source.read_for_gguf(info.gguf_name), stored_values(info.gguf_name, dtype)), info.gguf_name
    assert source.tensor("blk.0.ffn_down.weight").nbytes == HIDDEN * FFN * {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    assert source.gguf_names_of("blk.0.attn_q.weight") == ("blk.0.attn_q.weight",)
    assert source.gguf_names_of("model.layers.0.self_attn.q_proj.weight") == ()
    arch = source.arch
    assert (arch.gguf_arch_name, arch.n_layers, arch.hidden, arch.ffn, arch.n_head, arch.n_head_kv) == (
        "llama", LAYERS, HIDDEN, FFN, N_HEAD, N_HEAD_KV)
    assert arch.vocab == VOCAB and arch.tied_embeddings is False and arch.hf_model_type is None


def test_metadata_values_and_types(tiny_f16: Path) -> None:
    meta = open_gguf(tiny_f16).gguf_metadata()
    assert meta["tokenizer.ggml.tokens"].value[:2] == ["t0", "t1"]
    assert meta["tokenizer.ggml.tokens"].value[-1] == BAD_TOKEN
    assert (meta["tokenizer.ggml.tokens"].type, meta["tokenizer.ggml.tokens"].sub_type) == (VT.ARRAY, VT.STRING)
    assert meta["tokenizer.ggml.token_type"].sub_type == VT.INT32
    assert meta["tokenizer.ggml.scores"].sub_type == VT.FLOAT32 and meta["tokenizer.ggml.scores"].value[3] == -3.0
    assert meta["tokenizer.ggml.add_bos_token"].value is False and meta["tokenizer.ggml.add_bos_token"].type == VT.BOOL
    assert meta["test.bools"].value == [True, False, True]
    assert meta["test.nested"].value == [[1, 2], [3]] and meta["test.nested"].sub_type == VT.ARRAY
    assert (meta["test.u8"].value, meta["test.u8"].type) == (7, VT.UINT8)
    assert (meta["test.i64"].value, meta["test.f64"].value) == (-(2**40), 0.1)
    assert meta["llama.rope.freq_base"].type == VT.FLOAT32 and meta["llama.rope.freq_base"].value == 10000.0
    assert meta["tokenizer.chat_template"].value.startswith("{% for m in messages %}")
    dropped = {"general.file_type", "general.alignment", "test.empty", "quantize.imatrix.file"}
    assert not dropped & set(meta) and not any(key.startswith(("split.", "GGUF.")) for key in meta)
    assert dropped <= set(gguf_file_metadata(tiny_f16))  # the file has them: the source leaves them out


def test_fingerprint_covers_metadata_and_table(tmp_path: Path, tiny_f16: Path) -> None:
    first = open_gguf(tiny_f16).fingerprint()
    assert first == open_gguf(tiny_f16).fingerprint()
    other_weights = write_tiny(tmp_path / "other-weights.gguf", seed=1)
    assert open_gguf(other_weights).fingerprint() == first  # headers only: the data is never read for it
    assert open_gguf(write_tiny(tmp_path / "bf16.gguf", "BF16")).fingerprint() != first


def test_read_refuses_the_torch_stages(tiny_f16: Path) -> None:
    with pytest.raises(ModelError, match="torch stages .* need the Hugging Face folder") as info:
        open_gguf(tiny_f16).read("blk.0.attn_q.weight")
    assert info.value.code == "AQ313"
    with pytest.raises(ModelError, match="no tensor"):
        open_gguf(tiny_f16).tensor("blk.9.attn_q.weight")


# --- through the CLI: compile, quantize, metadata carried -----------------------------------------
def test_compile_a_recipe_whose_model_is_a_gguf(tmp_path: Path, tiny_f16: Path, capsys) -> None:
    shutil.copy(tiny_f16, tmp_path / "m.gguf")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: m.gguf\nquantization:\n  mixture: Q4_K_M\n  rules:\n"
                      "    - match: blk.0.ffn_down.weight\n      type: Q8_0\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "compile", str(recipe), "--json", "-o", str(tmp_path / "plan.json"))
    assert code == 0, err
    plan = json.loads(out)
    assert plan["model_path"] == str(tmp_path / "m.gguf") and "allow_requantize" not in plan["options"]
    types = {e["gguf_name"]: e["type"] for e in plan["entries"]}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and types["blk.1.attn_q.weight"] == "Q4_K"
    assert {e["source_dtype"] for e in plan["entries"]} == {"F16", "F32"}


def test_quantize_carries_the_metadata(tmp_path: Path, tiny_f16: Path, capsys) -> None:
    out = tmp_path / "q.gguf"
    code, _, err = run_cli(capsys, "quantize", str(tiny_f16), "--type", "Q8_0", "-o", str(out), "-q")
    assert code == 0, err
    written, source = gguf_file_metadata(out), open_gguf(tiny_f16).gguf_metadata()
    assert written["general.file_type"].value == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    for key, value in source.items():
        assert (written[key].value, written[key].type) == (value.value, value.type), key
        if key != "test.nested":  # gguf-py writes the inner arrays' item types itself
            assert written[key].sub_type == value.sub_type, key
    assert "quantize.imatrix.file" not in written and written.get("general.alignment") is None
    requant = open_gguf(out, allow_requantize=True)
    assert requant.tensor("blk.0.ffn_up.weight").dtype == "Q8_0"
    np.testing.assert_allclose(requant.read_for_gguf("blk.0.ffn_up.weight"),
                               stored_values("blk.0.ffn_up.weight", "F16"), atol=2e-3)


# --- quantized input ------------------------------------------------------------------------------
def test_quantized_input_is_refused(tiny_q8: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ModelError, match=r"already quantized \(16 Q8_0 tensors\); quantizing it again compounds") as info:
        open_gguf(tiny_q8)
    assert info.value.code == "AQ312" and "--allow-requantize" in info.value.hint
    out = tmp_path / "again.gguf"
    code, _, err = run_cli(capsys, "quantize", str(tiny_q8), "--type", "Q4_K_M", "-o", str(out))
    assert code == 2 and "error[AQ312]" in err and "rounding error" in err and "F16/BF16 GGUF" in err
    assert "Traceback" not in err and not out.exists()


def test_allow_requantize_warns_and_dequantizes(tmp_path: Path, capsys, caplog) -> None:
    path = write_tiny(tmp_path / "q4.gguf", "Q4_K")
    with caplog.at_level(logging.WARNING, logger="aqrecipe.models.gguf_source"):
        source = open_gguf(path, allow_requantize=True)
    assert "already quantized (16 Q4_K tensors)" in caplog.text and "compounds the rounding error" in caplog.text
    assert source.tensor("blk.1.attn_v.weight").dtype == "Q4_K"
    assert same_bits(source.read_for_gguf("blk.1.attn_v.weight"), stored_values("blk.1.attn_v.weight", "Q4_K"))

    plan, recipe = tmp_path / "plan.json", write_recipe(tmp_path, path, "Q8_0")
    code, _, err = run_cli(capsys, "compile", str(recipe), "-o", str(plan), "--summary")
    assert code == 2 and "error[AQ312]" in err
    code, _, err = run_cli(capsys, "validate", str(recipe))
    assert code == 2 and "already quantized" in err
    code, _, err = run_cli(capsys, "validate", str(recipe), "--allow-requantize")
    assert code == 0, err
    code, _, err = run_cli(capsys, "compile", str(recipe), "-o", str(plan), "--summary", "--allow-requantize")
    assert code == 0, err
    assert json.loads(plan.read_text())["options"]["allow_requantize"] is True
    out = tmp_path / "out.gguf"  # apply reopens the model with the permission the plan records
    code, _, err = run_cli(capsys, "apply", str(plan), "-o", str(out), "-q", "--no-eval")
    assert code == 0, err
    assert gguf_file_metadata(out)["general.file_type"].value == int(gguf.LlamaFileType.MOSTLY_Q8_0)


def write_recipe(folder: Path, model: Path, mixture: str) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"version: 1\nmodel: {model}\nquantization:\n  mixture: {mixture}\n", encoding="utf-8")
    return recipe


# --- split files, damaged files ------------------------------------------------------------------------
def test_split_parts_open_as_one(tmp_path: Path, tiny_f16: Path) -> None:
    write_tiny(tmp_path / "split.gguf", split_max_tensors=8)  # 21 tensors: three parts
    parts = sorted(tmp_path.glob("split-*.gguf"))
    assert [p.name for p in parts] == [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    whole = open_gguf(tiny_f16)
    for given in (parts[0], parts[2]):
        source = open_model(given)
        assert source.path == parts[0] and "3 parts" in repr(source)
        assert [(t.gguf_name, t.shape, t.dtype) for t in source.tensors] == [
            (t.gguf_name, t.shape, t.dtype) for t in whole.tensors]
        assert source.fingerprint() == whole.fingerprint()  # same model, whatever the split
        for name in ("token_embd.weight", "blk.1.ffn_down.weight", "output.weight"):
            assert same_bits(source.read_for_gguf(name), whole.read_for_gguf(name))
    parts[1].rename(tmp_path / "elsewhere.gguf")
    with pytest.raises(ModelError, match=r"1 of its 3 parts are missing: split-00002-of-00003\.gguf"):
        open_gguf(parts[0])
    (tmp_path / "elsewhere.gguf").rename(tmp_path / "renamed.gguf")
    shutil.copy(parts[0], tmp_path / "loose.gguf")
    with pytest.raises(ModelError, match=r"does not end in -NNNNN-of-00003\.gguf"):
        open_gguf(tmp_path / "loose.gguf")


def test_parts_of_another_split_are_refused(tmp_path: Path) -> None:
    write_tiny(tmp_path / "a.gguf", split_max_tensors=11)  # 21 tensors: two parts
    os.replace(tmp_path / "a-00001-of-00002.gguf", tmp_path / "a-00002-of-00002.tmp")
    os.replace(tmp_path / "a-00002-of-00002.gguf", tmp_path / "a-00001-of-00002.gguf")
    os.replace(tmp_path / "a-00002-of-00002.tmp", tmp_path / "a-00002-of-00002.gguf")
    with pytest.raises(GGUFFormatError, match="says it is part 2 of 2, but its name makes it part 1"):
        open_gguf(tmp_path / "a-00001-of-00002.gguf")


def test_truncated_file_is_a_clear_error(tmp_path: Path, tiny_f16: Path, capsys) -> None:
    cut = tmp_path / "cut.gguf"
    data = tiny_f16.read_bytes()
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(GGUFFormatError, match="extends beyond the end of the file"):
        open_model(cut)
    code, _, err = run_cli(capsys, "compile", str(write_recipe(tmp_path, cut, "Q8_0")))
    assert code == 2 and "error[AQ340]: " in err and "truncated" in err and "Traceback" not in err
    cut.write_bytes(data[:1000])  # inside the metadata
    with pytest.raises(GGUFFormatError, match="not a readable GGUF file"):
        open_gguf(cut)


# --- the demo model: the GGUF path against the HF path, and llama.cpp ------------------------------------
@pytest.fixture(scope="module")
def demo_hf() -> WeightSource:
    pytest.importorskip("torch")
    return open_model("demo")


@pytest.fixture(scope="module")
def demo_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo as an F16 GGUF, written by aqrecipe from the HF folder (once per module)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("demo-f16") / "demo-F16.gguf"
    assert main(["quantize", "demo", "--type", "F16", "-o", str(out), "-q"]) == 0
    return out


@pytest.mark.slow
def test_demo_gguf_matches_the_hf_folder(demo_hf: WeightSource, demo_f16: Path) -> None:
    source = open_model(demo_f16)
    assert [(t.gguf_name, t.shape) for t in source.tensors] == [(t.gguf_name, t.shape) for t in demo_hf.tensors]
    assert source.arch.to_dict() == {**demo_hf.arch.to_dict(), "hf_model_type": None}
    carried = demo_hf.gguf_metadata()
    assert set(source.gguf_metadata()) == set(carried)
    for key, value in source.gguf_metadata().items():
        assert (value.value, value.type) == (carried[key].value, carried[key].type), key
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.ffn_down.weight",
                 "blk.29.attn_norm.weight", "output_norm.weight"):
        theirs = demo_hf.read_for_gguf(name)  # q/k with llama.cpp's rope permutation applied
        if theirs.ndim > 1:
            theirs = theirs.astype(np.float16).astype(np.float32)
        assert same_bits(source.read_for_gguf(name), theirs.astype(np.float32)), name


@pytest.fixture(scope="module")
def demo_q4(demo_f16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-q4") / "demo-Q4_K_M.gguf"
    assert main(["quantize", str(demo_f16), "--type", "Q4_K_M", "-o", str(out), "-q"]) == 0
    return out


@pytest.mark.slow
def test_demo_quantized_from_gguf_carries_metadata(demo_f16: Path, demo_q4: Path) -> None:
    written, source = gguf_file_metadata(demo_q4), gguf_file_metadata(demo_f16)
    assert written["general.file_type"].value == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert source["general.file_type"].value == int(gguf.LlamaFileType.MOSTLY_F16)
    keys = [k for k in source if k.startswith(("tokenizer.", "llama.rope.", "llama.attention."))]
    assert "tokenizer.chat_template" in keys and "llama.rope.freq_base" in keys
    for key in keys:
        assert written[key].value == source[key].value, key


@pytest.mark.slow
@pytest.mark.llamacpp
def test_demo_quantized_from_gguf_loads_in_llamacpp(demo_q4: Path) -> None:
    pytest.importorskip("llama_cpp")
    from llamacpp_tools import greedy

    assert len(greedy(demo_q4, "The capital of France is").split()) >= 3
