"""aqrecipe.models: HF folders read lazily, names, transforms, errors, the demo model."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.errors import (
    CorruptFileError,
    ModelError,
    UnsupportedArchitectureError,
    UnsupportedDtypeError,
)
from aqrecipe.models import open_model
from aqrecipe.models.safetensors_io import read_header


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]], *, pad_header=b"") -> None:
    """A hand-made safetensors file: name -> (dtype, shape, raw bytes)."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode() + pad_header
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def llama_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The q/k row order llama.cpp's llama graph expects (test oracle; the library leaves it to the converter)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def torch_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --- reading ------------------------------------------------------------------
def test_tiny_llama_arch_and_order(tiny_llama_dir: Path) -> None:
    source = open_model(tiny_llama_dir)
    arch = source.arch
    assert (arch.hf_model_type, arch.gguf_arch_name) == ("llama", "llama")
    assert (arch.n_layers, arch.hidden, arch.ffn, arch.n_head, arch.n_head_kv, arch.head_dim) == (2, 64, 96, 4, 2, 16)
    assert (arch.vocab, arch.tied_embeddings, arch.context_length) == (49152, False, 256)
    assert source.gguf_metadata()["llama.rope.freq_base"].value == 10000.0
    names = [t.gguf_name for t in source.tensors]
    assert names[0] == "token_embd.weight"
    assert names[-2:] == ["output_norm.weight", "output.weight"]
    assert names[1:10] == sorted(names[1:10]) and all(n.startswith("blk.0.") for n in names[1:10])
    assert all(n.startswith("blk.1.") for n in names[10:19])
    assert len(names) == 2 + 2 * 9 + 1
    assert source.tensor("blk.0.attn_q.weight") is source.tensor("model.layers.0.self_attn.q_proj.weight")
    assert arch.to_dict()["gguf_arch_name"] == "llama"
    assert source.gguf_names_of("model.layers.0.self_attn.q_proj.weight") == ("blk.0.attn_q.weight",)


def test_read_equals_safetensors(tiny_llama_dir: Path) -> None:
    source = open_model(tiny_llama_dir)
    state = torch_state(tiny_llama_dir)
    for name, expected in state.items():
        values = source.read(name)
        assert values.dtype == np.float32 and values.shape == tuple(expected.shape)
        np.testing.assert_array_equal(values, expected.numpy())


def test_bf16_read_is_exact(tiny_qwen2_dir: Path) -> None:
    import torch

    source = open_model(tiny_qwen2_dir)
    state = torch_state(tiny_qwen2_dir)
    info = source.tensor("blk.0.attn_q.weight")
    assert info.dtype == "BF16"
    np.testing.assert_array_equal(source.read(info.hf_name), state[info.hf_name].to(torch.float32).numpy())


def test_qwen2_is_tied_with_biases_and_no_permutation(tiny_qwen2_dir: Path) -> None:
    source = open_model(tiny_qwen2_dir)
    assert source.arch.gguf_arch_name == "qwen2" and source.arch.tied_embeddings
    names = {t.gguf_name for t in source.tensors}
    assert "output.weight" not in names
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names
    q = "blk.1.attn_q.weight"
    np.testing.assert_array_equal(source.read_for_gguf(q), source.read(source.tensor(q).hf_name))


def test_read_for_gguf_permutes_llama_q_and_k(tiny_llama_dir: Path) -> None:
    source = open_model(tiny_llama_dir)
    q = source.read("model.layers.0.self_attn.q_proj.weight")
    k = source.read("model.layers.0.self_attn.k_proj.weight")
    np.testing.assert_array_equal(source.read_for_gguf("blk.0.attn_q.weight"), llama_rope_rows(q, 4))
    np.testing.assert_array_equal(source.read_for_gguf("blk.0.attn_k.weight"), llama_rope_rows(k, 2))
    assert not np.array_equal(source.read_for_gguf("blk.0.attn_q.weight"), q)
    v = source.read("model.layers.0.self_attn.v_proj.weight")
    np.testing.assert_array_equal(source.read_for_gguf("blk.0.attn_v.weight"), v)


def test_fingerprint_stable_and_sensitive(tiny_llama_dir: Path, tmp_path: Path) -> None:
    first = open_model(tiny_llama_dir).fingerprint()
    assert first == open_model(tiny_llama_dir).fingerprint() and len(first) == 64
    moved = copy_model(tiny_llama_dir, tmp_path / "moved")
    assert open_model(moved).fingerprint() == first  # paths do not count
    config = json.loads((moved / "config.json").read_text())
    config["rms_norm_eps"] = 1e-6
    (moved / "config.json").write_text(json.dumps(config))
    assert open_model(moved).fingerprint() != first


def test_relative_ref_uses_base_dir(tiny_llama_dir: Path) -> None:
    source = open_model(tiny_llama_dir.name, base_dir=tiny_llama_dir.parent)
    assert source.path == tiny_llama_dir
    assert source.tokenizer_dir == tiny_llama_dir


def make_sharded(src: Path, dst: Path) -> Path:
    """Split a single-file model into two shards with an index."""
    from safetensors.torch import save_file

    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    state = torch_state(src)
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: state[n].contiguous() for n in part}, str(dst / file))
        weight_map.update({n: file for n in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_sharded_folder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    sharded = open_model(make_sharded(tiny_llama_dir, tmp_path / "sharded"))
    single = open_model(tiny_llama_dir)
    assert [t.gguf_name for t in sharded.tensors] == [t.gguf_name for t in single.tensors]
    assert len({raw.file for raw in sharded._raw.values()}) == 2
    assert sharded.fingerprint() == single.fingerprint()
    for info in single.tensors:
        np.testing.assert_array_equal(sharded.read_for_gguf(info.gguf_name), single.read_for_gguf(info.gguf_name))


# --- errors -------------------------------------------------------------------
def test_missing_folder_and_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist") as exc:
        open_model(tmp_path / "nope")
    assert exc.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        open_model(tmp_path / "empty")


def test_missing_shard(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = make_sharded(tiny_llama_dir, tmp_path / "sharded")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelError, match="model-00002-of-00002.safetensors") as exc:
        open_model(folder)
    assert not isinstance(exc.value, CorruptFileError)


def test_index_naming_the_wrong_shard(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = make_sharded(tiny_llama_dir, tmp_path / "sharded")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.norm.weight"
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    index["weight_map"][name] = second if index["weight_map"][name] == first else first
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match="model.norm.weight"):
        open_model(folder)


def test_truncated_file(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptFileError, match="outside"):
        open_model(folder)
    weights.write_bytes(data[:5])
    with pytest.raises(CorruptFileError, match="too short"):
        open_model(folder)
    weights.write_bytes(data[:100])  # cut inside the JSON header
    with pytest.raises(CorruptFileError, match="header"):
        open_model(folder)


def test_offsets_past_eof(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 8)  # 8 of the 16 bytes
    with pytest.raises(CorruptFileError, match=r"\[0, 16\]"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 10**9) + text)  # header length past EOF
    with pytest.raises(CorruptFileError, match="header claims"):
        read_header(path)
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}  # size disagrees with shape
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 16)
    with pytest.raises(CorruptFileError, match="needs 16"):
        read_header(path)


def test_unsupported_dtype_names_tensor(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", folder / "config.json")
    write_safetensors(
        folder / "model.safetensors",
        {
            "model.norm.weight": ("F32", (64,), np.ones(64, np.float32).tobytes()),
            "model.position_ids": ("I64", (4,), np.arange(4, dtype=np.int64).tobytes()),
        },
    )
    with pytest.raises(UnsupportedDtypeError, match=r"model\.position_ids.*I64") as exc:
        open_model(folder)
    assert "F32" in exc.value.hint


def test_unknown_architecture(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "frobnicator"
    config["architectures"] = ["FrobnicatorForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match="FrobnicatorForCausalLM.*frobnicator") as exc:
        open_model(folder)
    assert "aqrecipe inspect --supported" in exc.value.hint
    assert "LlamaForCausalLM" in exc.value.hint and "Gemma2ForCausalLM" in exc.value.hint


def test_config_disagreeing_with_weights(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_llama_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"intermediate_size implies 128 columns but blk.0.ffn_down.weight "
                                         r"\(model.layers.0.mlp.down_proj.weight\) has 96"):
        open_model(folder)
    config["intermediate_size"] = 96
    config["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="layer 2"):
        open_model(folder)


def test_import_does_not_load_torch() -> None:
    code = "import sys, aqrecipe.models, aqrecipe.output.gguf; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the demo model -------------------------------------------------------------
@pytest.mark.slow
def test_demo_materialisation(demo_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from aqrecipe.models.demo import DEMO_GGUF, extract_demo_gguf

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (demo_model_dir / name).is_file()
    source = open_model("demo")
    assert source.path == demo_model_dir
    assert (source.arch.n_layers, source.arch.hidden, source.arch.vocab) == (30, 576, 49152)
    assert source.arch.tied_embeddings and len(source.tensors) == 272
    tok = json.loads((demo_model_dir / "tokenizer.json").read_text())
    assert tok["pre_tokenizer"]["pretokenizers"][0]["type"] == "Digits"  # restored for 'smollm'

    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 2]])
    hf = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    with torch.no_grad():
        ours = hf(ids).logits
    del hf
    gguf_dir = demo_model_dir.parent / ".test-gguf"
    shutil.rmtree(gguf_dir, ignore_errors=True)
    try:
        gguf_path = extract_demo_gguf(gguf_dir)
        ref = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=DEMO_GGUF, dtype=torch.float32)
        with torch.no_grad():
            expected = ref(ids).logits
    finally:
        shutil.rmtree(gguf_dir, ignore_errors=True)
    assert gguf_path.name == DEMO_GGUF
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
