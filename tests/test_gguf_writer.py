"""aqrecipe.output.gguf: GGUF files read back with gguf-py, transformers and llama.cpp."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe.errors import ByteLengthError, OutputError
from aqrecipe.output.gguf import PlannedTensor, guess_file_type, write_gguf
from aqrecipe.models import ModelSource, open_model


def plan_floats(source: ModelSource, matrix_type: str = "F16") -> list[PlannedTensor]:
    return [
        PlannedTensor(t.gguf_name, t.hf_name, t.shape, matrix_type if len(t.shape) == 2 else "F32")
        for t in source.tensors
    ]


def write_float_gguf(source: ModelSource, dest: Path, matrix_type: str = "F16", **kw) -> Path:
    planned = plan_floats(source, matrix_type)
    return write_gguf(dest, source, planned, lambda p: source.read_for_gguf(p.hf_name), **kw)


def field(reader: gguf.GGUFReader, key: str):
    found = reader.get_field(key)
    assert found is not None, key
    return found.contents()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- structure, metadata, values ------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_float_gguf_reads_back(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source = open_model(request.getfixturevalue(fixture))
    metadata = {"aqrecipe.recipe": "version: 1\n", "aqrecipe.plan_sha256": "ab" * 32, "general.name": "tiny"}
    dest = write_float_gguf(source, tmp_path / "m.gguf", metadata=metadata, file_type=1)
    assert leftovers(tmp_path) == ["m.gguf"]
    reader = gguf.GGUFReader(dest)
    arch = source.arch
    prefix = arch.gguf_arch_name
    assert field(reader, "general.architecture") == prefix
    assert field(reader, "general.name") == "tiny"
    assert field(reader, "general.file_type") == 1
    assert field(reader, "general.quantization_version") == 2
    expected_hparams = {
        "embedding_length": 64,
        "block_count": 2,
        "feed_forward_length": 96,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
    }
    for key, value in expected_hparams.items():
        assert field(reader, f"{prefix}.{key}") == value, key
    assert field(reader, "aqrecipe.recipe") == "version: 1\n"
    assert field(reader, "aqrecipe.plan_sha256") == "ab" * 32
    # every key llama.cpp's converter writes is carried over unchanged (tokenizer, rope, chat template, ...)
    carried = source.gguf_metadata()
    assert len(carried) > 20
    for key, value in carried.items():
        if key in ("general.name", "general.type"):
            continue
        got = reader.fields[key]
        assert got.types[0] == value.type, key
        expected = value.value
        if isinstance(expected, (list, tuple)):
            assert len(got.data) == len(expected), key
        else:
            got_value = field(reader, key)
            assert got_value == (pytest.approx(expected) if isinstance(expected, float) else expected), key
    assert field(reader, "tokenizer.ggml.model") == ("gpt2" if prefix == "llama" else "llama")
    if prefix == "llama":
        assert field(reader, "tokenizer.ggml.pre") == "smollm"
        assert "<|im_start|>" in field(reader, "tokenizer.chat_template")

    assert [t.name for t in reader.tensors] == [t.gguf_name for t in source.tensors]
    for tensor, info in zip(reader.tensors, source.tensors):
        matrix = len(info.shape) == 2
        assert tensor.tensor_type == (gguf.GGMLQuantizationType.F16 if matrix else gguf.GGMLQuantizationType.F32)
        assert tuple(tensor.data.shape) == info.shape
        expected = source.read_for_gguf(info.gguf_name)
        np.testing.assert_array_equal(tensor.data, expected.astype(np.float16) if matrix else expected)


def test_tied_model_has_no_output(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    reader = gguf.GGUFReader(write_float_gguf(open_model(tiny_qwen2_dir), tmp_path / "q.gguf"))
    names = [t.name for t in reader.tensors]
    assert "output.weight" not in names and names[0] == "token_embd.weight"


def test_quantized_raw_bytes_stream_in_plan_order(tiny_llama_dir: Path, tmp_path: Path) -> None:
    source = open_model(tiny_llama_dir)
    planned = plan_floats(source, "Q8_0")
    calls: list[str] = []

    def produce(p: PlannedTensor) -> np.ndarray:
        calls.append(p.gguf_name)
        values = source.read_for_gguf(p.hf_name)
        if p.type_name == "F32":
            return values
        return gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)

    dest = write_gguf(tmp_path / "q8.gguf", source, planned, produce, {}, None)
    assert calls == [p.gguf_name for p in planned]
    reader = gguf.GGUFReader(dest)
    assert field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    for tensor, p in zip(reader.tensors, planned):
        assert tensor.tensor_type.name == p.type_name
        if p.type_name == "Q8_0":
            values = source.read_for_gguf(p.hf_name)
            decoded = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            expected = gguf.quants.dequantize(
                gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
            )
            np.testing.assert_array_equal(decoded.reshape(p.shape), expected)


def test_guess_file_type() -> None:
    def planned(*types: str) -> list[PlannedTensor]:
        return [PlannedTensor(f"t{i}", f"h{i}", (32, 32), t) for i, t in enumerate(types)]

    assert guess_file_type(planned("Q4_K", "Q4_K", "Q6_K")) == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert guess_file_type(planned("F32")) == gguf.LlamaFileType.ALL_F32
    assert guess_file_type([PlannedTensor("n", "n", (32,), "F32")]) == gguf.LlamaFileType.ALL_F32


# --- real consumer: transformers un-permutes and must get the HF model back --------
@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("matrix_type", ["F32", "F16"])
def test_transformers_loads_our_gguf(fixture: str, matrix_type: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder = request.getfixturevalue(fixture)
    source = open_model(folder)
    write_float_gguf(source, tmp_path / "m.gguf", matrix_type)
    original = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)

    q_name = "model.layers.1.self_attn.q_proj.weight"
    k_name = "model.layers.1.self_attn.k_proj.weight"
    for name in (q_name, k_name):
        want = original.state_dict()[name]
        if matrix_type == "F16":
            want = want.half().float()
        torch.testing.assert_close(loaded.state_dict()[name], want, rtol=0, atol=0)

    ids = torch.tensor([[1, 70, 80, 90, 100, 250, 300, 2]])
    with torch.no_grad():
        want_logits, got_logits = original(ids).logits, loaded(ids).logits
    atol = 1e-5 if matrix_type == "F32" else 2e-2
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=atol)
    assert torch.equal(got_logits.argmax(-1), want_logits.argmax(-1)) or matrix_type == "F16"


def test_missing_output_folder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    source = open_model(tiny_llama_dir)
    with pytest.raises(OutputError, match="does not exist") as exc:
        write_float_gguf(source, tmp_path / "missing" / "m.gguf")
    assert exc.value.hint and not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            write_float_gguf(open_model(tiny_llama_dir), folder / "m.gguf")
        assert leftovers(folder) == []
    finally:
        folder.chmod(0o755)


def test_failing_producer_leaves_nothing(tiny_llama_dir: Path, tmp_path: Path) -> None:
    source = open_model(tiny_llama_dir)
    planned = plan_floats(source)

    def produce(p: PlannedTensor) -> np.ndarray:
        if p.gguf_name == "blk.1.attn_q.weight":
            raise RuntimeError("boom")
        return source.read_for_gguf(p.hf_name)

    with pytest.raises(RuntimeError, match="boom"):
        write_gguf(tmp_path / "m.gguf", source, planned, produce, {}, None)
    assert leftovers(tmp_path) == []


def test_wrong_byte_count_is_an_error(tiny_llama_dir: Path, tmp_path: Path) -> None:
    source = open_model(tiny_llama_dir)
    planned = plan_floats(source, "Q8_0")

    def produce(p: PlannedTensor) -> np.ndarray:
        return np.zeros(10, dtype=np.uint8)

    with pytest.raises(ByteLengthError, match="token_embd.weight"):
        write_gguf(tmp_path / "m.gguf", source, planned, produce, {}, None)
    assert leftovers(tmp_path) == []


def test_existing_output_is_replaced_atomically(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "m.gguf"
    dest.write_bytes(b"old")
    write_float_gguf(open_model(tiny_qwen2_dir), dest)
    assert dest.read_bytes()[:4] == b"GGUF" and leftovers(tmp_path) == ["m.gguf"]


# --- the demo model through real consumers ----------------------------------------------
SENTENCES = [
    "The capital of France is Paris.",
    "In 2024, 12345 people paid $3.50 each -- that's 43,207.50 dollars!",
    "  Leading spaces,\ttabs\nand newlines\n\n  here.",
    "Ünïcödé naïve café, 日本語, emoji 🙂 and x^2+y^2=z^2",
    "def f(x):\n    return x*2  # doubled",
]


@pytest.fixture(scope="module")
def demo_f16_gguf(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = open_model(demo_model_dir)
    return write_float_gguf(source, tmp_path_factory.mktemp("demo_gguf") / "demo-F16.gguf", "F16")


@pytest.mark.slow
def test_demo_f16_gguf_metadata(demo_f16_gguf: Path) -> None:
    reader = gguf.GGUFReader(demo_f16_gguf)
    assert field(reader, "tokenizer.ggml.pre") == "smollm"
    assert len(field(reader, "tokenizer.ggml.tokens")) == 49152
    assert field(reader, "tokenizer.ggml.bos_token_id") == 1
    assert field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert field(reader, "llama.block_count") == 30
    assert len(reader.tensors) == 272
    assert "<|im_start|>" in field(reader, "tokenizer.chat_template")


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llamacpp_tokenizes_like_transformers(demo_model_dir: Path, demo_f16_gguf: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(demo_model_dir)
    llm = llama_cpp.Llama(model_path=str(demo_f16_gguf), vocab_only=True, verbose=False)
    for text in SENTENCES:
        ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ours == hf.encode(text, add_special_tokens=False), text


@pytest.mark.slow
@pytest.mark.llamacpp
def test_llamacpp_generates_english(demo_f16_gguf: Path) -> None:
    pytest.importorskip("llama_cpp")
    from llamacpp_tools import greedy

    text = greedy(demo_f16_gguf, "The capital of France is", 12)
    assert "Paris" in text, text
