"""ModelSource: a Hugging Face folder opened lazily (headers only until read)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aqrecipe.errors import CorruptFileError, ModelError
from aqrecipe.models.architectures import ArchInfo, arch_info_from_config, model_type_of
from aqrecipe.models.files import INDEX_FILE, find_weight_files, load_config
from aqrecipe.models.naming import NameMapper, gguf_order_key
from aqrecipe.models.safetensors_io import RawTensor, read_header, read_tensor
from aqrecipe.models.tensor_names import hf_layer_of, layer_of, to_gguf_layout

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class TensorInfo:
    """One weight: its names, HF-orientation shape ([out, in]) and where its bytes are."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    offset: int
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["file"] = str(self.file)
        data["shape"] = list(self.shape)
        return data


class ModelSource:
    """An opened model: config, architecture, tensor table; tensors read on demand."""

    def __init__(self, path: Path, config: dict[str, Any], arch: ArchInfo, tensors: tuple[TensorInfo, ...]):
        self.path = path
        self.config = config
        self.arch = arch
        self.tensors = tensors
        self._by_name: dict[str, TensorInfo] = {}
        for info in tensors:
            self._by_name[info.hf_name] = info
            self._by_name[info.gguf_name] = info

    def __repr__(self) -> str:
        return f"ModelSource({str(self.path)!r}, {self.arch.hf_model_type}, {len(self.tensors)} tensors)"

    def tensor(self, name: str) -> TensorInfo:
        """Look a tensor up by its HF or GGUF name."""
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelError(
                f"model {self.path} has no tensor {name!r}",
                hint="tensor names are GGUF names (blk.0.attn_q.weight) or HF names",
            ) from None

    def read(self, name: str) -> np.ndarray:
        """A tensor as float32 in HF orientation [out, in]."""
        info = self.tensor(name)
        raw = RawTensor(info.hf_name, info.dtype, info.shape, info.file, info.offset, info.nbytes)
        return read_tensor(raw)

    def read_for_gguf(self, name: str) -> np.ndarray:
        """A tensor as float32 with llama.cpp's conversion transforms applied."""
        return to_gguf_layout(self.arch, self.tensor(name).gguf_name, self.read(name))

    def fingerprint(self) -> str:
        """sha256 over config.json and the tensor headers (not paths, not data)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config, sort_keys=True, separators=(",", ":")).encode())
        for info in self.tensors:
            line = f"{info.hf_name}|{info.gguf_name}|{info.dtype}|{list(info.shape)}|{info.nbytes}\n"
            digest.update(line.encode())
        return digest.hexdigest()

    @property
    def tokenizer_dir(self) -> Path | None:
        """The folder holding the HF tokenizer files, or None if there are none."""
        if any((self.path / name).is_file() for name in _TOKENIZER_FILES):
            return self.path
        return None

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors)


def open_model(ref: str | Path, base_dir: Path | None = None) -> ModelSource:
    """Open ``"demo"`` or a local HF folder; reads config.json and headers only."""
    if str(ref) == "demo":
        from aqrecipe.models.demo import materialize_demo

        path = materialize_demo()
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
    return open_folder(path)


def open_folder(path: Path) -> ModelSource:
    """Open a Hugging Face model folder (config.json + safetensors)."""
    path = Path(path)
    config = load_config(path)
    model_type_of(config)  # fail on an unknown architecture before touching weights
    raw = [t for file in find_weight_files(path) for t in read_header(file)]
    names = {t.name for t in raw}
    _check_index(path, {t.name: t.file.name for t in raw})
    tied = "lm_head.weight" not in names or bool(config.get("tie_word_embeddings", False))
    arch = arch_info_from_config(config, tied_embeddings=tied)
    _check_config_matches(path, arch, raw)
    return ModelSource(path, config, arch, _map_tensors(path, arch, raw))


def _check_config_matches(path: Path, arch: ArchInfo, raw: list[RawTensor]) -> None:
    """config.json's sizes against the tensor shapes; one error lists every disagreement."""

    def rows_cols(suffix: str) -> tuple[str, int, int] | None:
        t = next((t for t in raw if t.name.endswith(suffix) and len(t.shape) == 2), None)
        return (t.name, t.shape[0], t.shape[1]) if t else None

    a, problems = arch, []
    if embed := rows_cols("embed_tokens.weight"):
        if embed[2] != a.hidden:
            problems.append(f"hidden_size is {a.hidden} but {embed[0]} has {embed[2]} columns")
        if embed[1] != a.vocab:
            problems.append(f"vocab_size is {a.vocab} but {embed[0]} has {embed[1]} rows")
    q_rows, kv_rows = a.n_head * a.head_dim, a.n_head_kv * a.head_dim
    checks = (  # tensor suffix, config keys, their values as shown, the rows they imply
        ("mlp.gate_proj.weight", "intermediate_size", f"{a.ffn}", a.ffn),
        ("self_attn.q_proj.weight", "num_attention_heads x head_dim", f"{a.n_head} x {a.head_dim} = {q_rows}", q_rows),
        ("self_attn.k_proj.weight", "num_key_value_heads x head_dim", f"{a.n_head_kv} x {a.head_dim} = {kv_rows}", kv_rows),
    )
    for suffix, keys, shown, rows in checks:
        found = rows_cols(suffix)
        if found and found[1] != rows:
            problems.append(f"{keys} is {shown} but {found[0]} has {found[1]} rows")
    layers = {layer for t in raw if (layer := hf_layer_of(t.name)) is not None}
    n_found = max(layers) + 1 if layers else a.n_layers
    if n_found != a.n_layers:
        missing = f" (no layer {n_found})" if n_found < a.n_layers else ""
        problems.append(f"num_hidden_layers is {a.n_layers} but the weights hold {n_found} layers{missing}")
    if problems:
        example = _first_shape_mismatch(arch, raw)
        raise ModelError(
            f"{path}: config.json does not match the weights: {'; '.join(problems)}"
            + (f" (e.g. {example})" if example else ""),
            hint="use the config.json that came with these weights; it belongs to another model or was edited",
        )


def _first_shape_mismatch(arch: ArchInfo, raw: list[RawTensor]) -> str | None:
    mapper = NameMapper(arch)
    for t in raw:
        found = mapper.lookup(t.name)
        expected = mapper.expected_shape(*found) if found else None
        if expected is not None and tuple(t.shape) != expected:
            return f"{t.name} has shape {list(t.shape)} but config.json implies {list(expected)}"
    return None


def _check_index(path: Path, found: dict[str, str]) -> None:
    """Every tensor the shard index names must be in the shard it names."""
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        return
    weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    for name, shard in sorted(weight_map.items()):
        if found.get(name) != shard:
            raise CorruptFileError(
                f"{index_path.name} places {name!r} in {shard}, but that shard does not hold it",
                hint="the shards and the index come from different downloads; fetch them again",
            )


def _map_tensors(path: Path, arch: ArchInfo, raw: list[RawTensor]) -> tuple[TensorInfo, ...]:
    mapper = NameMapper(arch)
    infos: list[TensorInfo] = []
    seen_blocks: set[int] = set()
    for t in raw:
        if mapper.is_ignored(t.name):
            continue
        found = mapper.lookup(t.name)
        if found is None:
            raise ModelError(
                f"{path}: tensor {t.name!r} has no llama.cpp counterpart for {arch.hf_model_type}",
                hint="the checkpoint holds tensors this architecture does not have; "
                "check config.json's model_type and num_hidden_layers",
            )
        kind, gguf_name = found
        if gguf_name.startswith("output.") and arch.tied_embeddings:
            continue  # tied: llama.cpp reuses token_embd
        expected = mapper.expected_shape(kind, gguf_name)
        if expected is not None and tuple(t.shape) != expected:
            raise ModelError(
                f"{path}: tensor {t.name!r} has shape {list(t.shape)} but config.json implies "
                f"{list(expected)}",
                hint="config.json does not belong to these weights (hidden_size, heads, "
                "intermediate_size or vocab_size disagree)",
            )
        if (layer := layer_of(gguf_name)) is not None:
            seen_blocks.add(layer)
        infos.append(TensorInfo(t.name, gguf_name, t.shape, t.dtype, t.file, t.offset, t.nbytes))
    _check_complete(path, arch, infos, seen_blocks)
    infos.sort(key=lambda info: gguf_order_key(info.gguf_name))
    return tuple(infos)


def _check_complete(path: Path, arch: ArchInfo, infos: list[TensorInfo], blocks: set[int]) -> None:
    missing_blocks = sorted(set(range(arch.n_layers)) - blocks)
    gguf_names = {info.gguf_name for info in infos}
    missing = [n for n in ("token_embd.weight", "output_norm.weight") if n not in gguf_names]
    if missing_blocks or missing:
        what = ", ".join(missing + [f"layer {i}" for i in missing_blocks[:5]])
        raise ModelError(
            f"{path}: weights are incomplete: no {what}",
            hint=f"config.json says {arch.n_layers} layers; a shard may be missing or the "
            "config may belong to another model",
        )
