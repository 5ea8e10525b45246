"""ModelSource: a Hugging Face folder read through llama.cpp's converter, lazily.

Opening a folder reads config.json and the safetensors headers ourselves (validated against the
file sizes before anything else touches them), then runs llama.cpp's converter on lazy tensors
(:mod:`aqrecipe.models.converter.bridge`) for the GGUF tensor table and metadata. Tensor data is
read only on demand: ``read_for_gguf`` in llama.cpp's layout for packing, ``read`` in HF
orientation for the torch stages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aqrecipe.errors import CorruptFileError, ModelError
from aqrecipe.models.architectures import ArchInfo, arch_info_from_metadata
from aqrecipe.models.config_check import check_config
from aqrecipe.models.files import (INDEX_FILE, TOKENIZER_FILES, check_tokenizer_files, find_weight_files,
                                   load_config, load_json)
from aqrecipe.models.safetensors_io import RawTensor, read_header, read_tensor
from aqrecipe.models.tensor_names import gguf_order_key
from aqrecipe.models.tensor_names import hf_layer_of
from aqrecipe.models.tensor_table import HF_CONFIG_KEYS, TensorInfo, check_shapes

if TYPE_CHECKING:
    import gguf

    from aqrecipe.models.converter.bridge import Conversion


class ModelSource:
    """An opened HF folder: config, the converter's tensor table and metadata, tensors on demand."""

    def __init__(self, path: Path, config: dict[str, Any], conversion: Conversion, raw: list[RawTensor]):
        self.path = path
        self.config = config
        self._conversion = conversion
        self._tokenizer_checked = False
        self._raw = {t.name: t for t in raw}
        tensors = []
        for t in sorted(conversion.tensors, key=lambda t: gguf_order_key(t.gguf_name)):
            first = self._raw.get(t.hf_sources[0]) if t.hf_sources else None
            n = int(np.prod(t.shape)) if t.shape else 1
            tensors.append(TensorInfo(t.hf_sources[0] if t.hf_sources else t.gguf_name, t.gguf_name, t.shape,
                                      first.dtype if first else "F32", first.nbytes if first else 4 * n))
        self.tensors = tuple(tensors)
        self._by_name: dict[str, TensorInfo] = {info.gguf_name: info for info in self.tensors}
        self._feeds: dict[str, tuple[str, ...]] = {}
        for t in conversion.tensors:
            for hf in t.hf_sources:
                self._feeds[hf] = self._feeds.get(hf, ()) + (t.gguf_name,)
        vocab_rows = self._by_name["token_embd.weight"].shape[0] if "token_embd.weight" in self._by_name else None
        self.arch: ArchInfo = arch_info_from_metadata(
            conversion.arch_metadata, vocab_rows=vocab_rows, tied_embeddings="output.weight" not in self._by_name,
            hf_model_type=config.get("model_type") if isinstance(config.get("model_type"), str) else None)

    def __repr__(self) -> str:
        return f"ModelSource({str(self.path)!r}, {self.arch.gguf_arch_name}, {len(self.tensors)} tensors)"

    def tensor(self, name: str) -> TensorInfo:
        """Look a tensor up by its GGUF name, or by the HF name of its source."""
        info = self._by_name.get(name)
        if info is None and self._feeds.get(name):
            info = self._by_name.get(self._feeds[name][0])
        if info is None:
            raise ModelError(
                f"model {self.path} has no tensor {name!r}",
                hint="tensor names are GGUF names (blk.0.attn_q.weight) or HF names",
            )
        return info

    def read(self, hf_name: str) -> np.ndarray:
        """An HF tensor as float32 in HF orientation (what the torch stages load)."""
        raw = self._raw.get(hf_name)
        if raw is None:
            raise ModelError(f"model {self.path} has no HF tensor {hf_name!r}",
                             hint="HF names are those of the safetensors headers")
        return read_tensor(raw)

    def _converted(self) -> Conversion:
        """The conversion, its tokenizer files checked first (the full run reads them)."""
        if not self._tokenizer_checked:
            check_tokenizer_files(self.path)
            self._tokenizer_checked = True
        return self._conversion

    def read_for_gguf(self, name: str) -> np.ndarray:
        """A GGUF tensor as float32, exactly as llama.cpp's converter makes it."""
        return self._converted().read(self.tensor(name).gguf_name)

    def convert_values(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The GGUF tensors that replacement HF tensors convert to (SmoothQuant's smoothed weights)."""
        return self._converted().convert_values(values)

    def gguf_names_of(self, hf_name: str) -> tuple[str, ...]:
        return self._feeds.get(hf_name, ())

    def gguf_metadata(self) -> dict[str, gguf.GGUFValue]:
        return dict(self._converted().metadata)

    def fingerprint(self) -> str:
        """sha256 over config.json, the HF headers and the converted table (not paths, not data)."""
        from aqrecipe.models.converter.bundle import CONVERTER_VERSION

        digest = hashlib.sha256(f"converter {CONVERTER_VERSION}\n".encode())
        digest.update(json.dumps(self.config, sort_keys=True, separators=(",", ":")).encode())
        for raw in sorted(self._raw.values(), key=lambda r: r.name):
            digest.update(f"{raw.name}|{raw.dtype}|{list(raw.shape)}|{raw.nbytes}\n".encode())
        for info in self.tensors:
            digest.update(f"{info.gguf_name}|{list(info.shape)}\n".encode())
        return digest.hexdigest()

    @property
    def hf_folder(self) -> Path:
        return self.path

    @property
    def weight_files(self) -> tuple[Path, ...]:
        """The safetensors files, in the order their headers were read."""
        return tuple(dict.fromkeys(t.file for t in self._raw.values()))

    @property
    def tokenizer_dir(self) -> Path | None:
        """The folder holding the HF tokenizer files, or None if there are none."""
        if any((self.path / name).is_file() for name in TOKENIZER_FILES):
            return self.path
        return None


def open_model(ref: str | Path, base_dir: Path | None = None, *, allow_requantize: bool = False) -> Any:
    """Open ``"demo"``, a local HF folder or a GGUF file (headers only until tensors are read)."""
    if str(ref) == "demo":
        from aqrecipe.models.demo import materialize_demo

        path = materialize_demo()
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
    if path.is_file() and path.suffix.lower() == ".gguf":
        from aqrecipe.models.gguf_source import open_gguf

        return open_gguf(path, allow_requantize=allow_requantize)
    return open_folder(path)


def open_folder(path: Path) -> ModelSource:
    """Open a Hugging Face model folder (config.json + safetensors) through llama.cpp's converter."""
    from aqrecipe.models.converter.bridge import Conversion

    path = Path(path)
    config = load_config(path)
    check_config(path, config)
    raw = [t for file in find_weight_files(path) for t in read_header(file)]
    _check_unique(raw)
    _check_index(path, {t.name: t.file.name for t in raw})
    _check_layer_count(path, config, raw)
    from aqrecipe.models.converter.table import table_key

    key = table_key(config, ((t.name, t.dtype, t.shape) for t in raw))
    source = ModelSource(path, config, Conversion(path, hparams=config, table_key=key), raw)
    _check_tied_output(source, raw)
    vocab = config.get("vocab_size")
    check_shapes(source.path, source.arch, source.tensors, HF_CONFIG_KEYS,
                 declared_vocab=vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None)
    return source


def _check_unique(raw: list[RawTensor]) -> None:
    """A tensor in two shards is ambiguous (which one would the converter take?)."""
    seen: dict[str, Path] = {}
    for t in raw:
        if t.name in seen and seen[t.name] != t.file:
            raise CorruptFileError(
                f"tensor {t.name!r} is in two shards, {seen[t.name].name} and {t.file.name}",
                hint="the folder mixes files of two downloads or conversions; fetch the model again",
            )
        seen[t.name] = t.file


def _check_tied_output(source: ModelSource, raw: list[RawTensor]) -> None:
    """``tie_word_embeddings: true`` with a distinct lm_head.weight: the converter would drop the head."""
    head = next((t for t in raw if t.name == "lm_head.weight"), None)
    if head is not None and source.config.get("tie_word_embeddings") is True:
        kept = "keeps it" if not source.arch.tied_embeddings else "drops it"
        raise ModelError(
            f"{source.path}: config.json says tie_word_embeddings: true, but the weights hold their own "
            f"lm_head.weight: transformers ties the head to the embeddings while llama.cpp's converter {kept}, "
            "so the two would not run the same model",
            hint="if the head is trained separately set tie_word_embeddings: false in config.json; if it is a "
            "copy of the embeddings, remove it from the checkpoint",
        )


def _check_layer_count(path: Path, config: dict[str, Any], raw: list[RawTensor]) -> None:
    """num_hidden_layers against the ``.layers.N.`` blocks of the weights (before the converter, which
    would only say that it cannot map a tensor of the extra layer)."""
    layers = {layer for t in raw if (layer := hf_layer_of(t.name)) is not None}
    declared = config.get("num_hidden_layers")
    if layers and isinstance(declared, int) and not isinstance(declared, bool) and max(layers) + 1 != declared:
        raise ModelError(
            f"{path}: the configuration does not match the weights: num_hidden_layers is {declared} but the "
            f"weights hold {max(layers) + 1} layers"
            + (f" (no layer {max(layers) + 1})" if max(layers) + 1 < declared else ""),
            hint="use the config.json that came with these weights; it belongs to another model or was edited",
        )


def _check_index(path: Path, found: dict[str, str]) -> None:
    """Every tensor the shard index names must be in the shard it names."""
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        return
    weight_map = load_json(index_path, hint="restore the index file from the model repository")["weight_map"]
    for name, shard in sorted(weight_map.items()):
        if found.get(name) != shard:
            raise CorruptFileError(
                f"{index_path.name} places {name!r} in {shard}, but that shard does not hold it",
                hint="the shards and the index come from different downloads; fetch them again",
            )
