"""Synthetic model folders for benchmarks: real headers, sparse (unallocated) data.

A 70B-shaped llama folder takes a few kilobytes of disk: each shard's
safetensors header is real and the file is extended with ``truncate`` to the
size the header promises, so readers that check offsets against the file size
accept it, and nothing reads the (zero) data during a compile.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def llama_tensor_shapes(cfg: dict) -> dict[str, list[int]]:
    """HF tensor names and shapes of a dense llama model."""
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": [h],
            p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [h, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, h],
            p + "mlp.gate_proj.weight": [f, h],
            p + "mlp.up_proj.weight": [f, h],
            p + "mlp.down_proj.weight": [h, f],
        })
    return shapes


def _write_header(f, chunk: list[tuple[str, list[int]]], dtype: str, itemsize: int) -> int:
    """Write a safetensors header for ``chunk`` (tensors in order); returns the data section's bytes."""
    header, offset = {}, 0
    for tname, shape in chunk:
        n = itemsize
        for d in shape:
            n *= d
        header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)
    return offset


def write_sparse_model(folder: Path, cfg: dict = LLAMA_70B, n_shards: int = 30, dtype: str = "BF16",
                       shapes: dict[str, list[int]] | None = None) -> Path:
    """Write config.json, sharded safetensors headers (sparse data) and the index; ``shapes`` (checkpoint
    name -> shape) defaults to a dense llama model's."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    shapes = list((shapes if shapes is not None else llama_tensor_shapes(cfg)).items())
    per_shard = -(-len(shapes) // n_shards)
    weight_map = {}
    itemsize = 2 if dtype in ("BF16", "F16") else 4
    for s in range(n_shards):
        chunk = shapes[s * per_shard : (s + 1) * per_shard]
        if not chunk:
            break
        name = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        with open(folder / name, "wb") as f:
            data_bytes = _write_header(f, chunk, dtype, itemsize)
            f.truncate(f.tell() + data_bytes)
        weight_map.update((tname, name) for tname, _ in chunk)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def write_random_model(folder: Path, cfg: dict, *, seed: int = 0, shard_bytes: int = 512 << 20) -> Path:
    """Write a dense llama folder with random F32 weights (N(0, 0.02); norms 1), sharded.

    Tensors are generated and written one at a time straight into the safetensors
    files, so the writer never holds more than the largest tensor in memory.
    """
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "float32"}, indent=1))
    shapes = list(llama_tensor_shapes(cfg).items())
    shards: list[list[tuple[str, list[int]]]] = [[]]
    size = 0
    for tname, shape in shapes:
        n = 4 * int(np.prod(shape))
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((tname, shape))
        size += n
    rng = np.random.default_rng(seed)
    weight_map = {}
    for s, chunk in enumerate(shards):
        name = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        weight_map.update((tname, name) for tname, _ in chunk)
        with open(folder / name, "wb") as f:
            _write_header(f, chunk, "F32", 4)
            for tname, shape in chunk:
                if len(shape) == 1:
                    values = np.ones(shape, dtype=np.float32)
                else:
                    values = rng.standard_normal(shape, dtype=np.float32)
                    values *= 0.02
                f.write(values.data)  # float32 is little-endian here
                del values
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def write_sparse_gguf(path: Path, cfg: dict = LLAMA_70B, n_merges: int = 280_147) -> Path:
    """An F16 GGUF of ``cfg``'s shape: real header (hparams, a vocabulary of ``vocab_size`` tokens and
    ``n_merges`` merges, every tensor's info), sparse data (the file is extended to its full size)."""
    import gguf
    import numpy as np

    from aqrecipe.models.tensor_names import gguf_order_key

    h, v, n = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(n)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(h)
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list([f"tok{i}" for i in range(v)])
    writer.add_token_types([int(gguf.TokenType.NORMAL)] * v)
    writer.add_token_merges([f"t{i} k{i}" for i in range(n_merges)])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    roles = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    infos = []
    for hf, shape in llama_tensor_shapes(cfg).items():
        if hf in names:
            name = names[hf]
        else:
            layer, rest = hf.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{layer}.{roles[rest.removesuffix('.weight')]}.weight"
        infos.append((name, shape))
    for name, shape in sorted(infos, key=lambda item: gguf_order_key(item[0])):
        kind = gguf.GGMLQuantizationType.F16 if len(shape) == 2 else gguf.GGMLQuantizationType.F32
        nbytes = int(np.prod(shape)) * (2 if len(shape) == 2 else 4)
        writer.add_tensor_info(name, shape, np.dtype(np.float16), nbytes, raw_dtype=kind)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    data = sum(gguf.GGUFWriter.ggml_pad(int(np.prod(s)) * (2 if len(s) == 2 else 4), 32) for _, s in infos)
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.truncate(gguf.GGUFWriter.ggml_pad(f.tell(), 32) + data)
    return path
