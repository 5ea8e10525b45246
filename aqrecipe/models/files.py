"""Locating config.json and the safetensors files of an HF folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from aqrecipe.errors import CorruptFileError, ModelError
from aqrecipe.formats.bounded import read_text_bounded

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: PyTorch checkpoint names: pickles, recognised by name only and never opened.
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def load_json(path: Path, *, hint: str) -> Any:
    """Parse a JSON file of a model folder; CorruptFileError (never a traceback) when it is not JSON."""
    try:
        return json.loads(read_text_bounded(path, kind="json", what="model file", error=ModelError))
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc})", hint=hint) from None
    except RecursionError:
        raise CorruptFileError(f"{path} is nested too deeply to be a model file", hint=hint) from None


def load_config(folder: Path) -> dict[str, Any]:
    """Parse ``folder/config.json``; ModelError if the folder or file is missing."""
    if not folder.is_dir():
        raise ModelError(
            f"model folder {folder} does not exist",
            hint="pass 'demo' or the path of a local Hugging Face model folder",
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"{folder} has no config.json",
            hint="a Hugging Face model folder needs config.json next to its safetensors files",
        )
    config = load_json(config_path, hint="restore config.json")
    if not isinstance(config, dict):
        raise CorruptFileError(f"{config_path} is not a JSON object", hint="restore config.json")
    return config


def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder, single-file or sharded (via the index)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        return _files_from_index(folder, index_path)
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    pickles = sorted(p.name for pattern in _PICKLE_PATTERNS for p in folder.glob(pattern))
    if pickles:
        # Loading a pickle runs whatever code it holds: aqrecipe never does, not even to convert.
        raise ModelError(
            f"{folder} holds only pickle checkpoints ({', '.join(pickles[:3])}); aqrecipe never loads "
            "pickles because unpickling can run arbitrary code",
            hint="convert it to safetensors where you trust the file: python -c \"from transformers import "
            "AutoModelForCausalLM as M; M.from_pretrained('IN').save_pretrained('OUT', safe_serialization=True)\" "
            "(copy the tokenizer files too), or download the model's safetensors version",
        )
    raise ModelError(
        f"{folder} has no safetensors weights",
        hint="aqrecipe reads model.safetensors or sharded model-*.safetensors with their index; "
        "convert .bin checkpoints with transformers' save_pretrained(safe_serialization=True)",
    )


def _files_from_index(folder: Path, index_path: Path) -> list[Path]:
    index = load_json(index_path, hint="restore the index file from the model repository")
    try:
        weight_map = index["weight_map"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise TypeError("weight_map names and shards must be strings")
        shards = sorted(set(weight_map.values()))
    except (KeyError, TypeError, AttributeError):
        raise CorruptFileError(
            f"{index_path} is not a valid safetensors index (its weight_map must map tensor names to shard file names)",
            hint="restore the index file from the model repository",
        ) from None
    files = []
    for shard in shards:
        shard_path = folder / shard
        if not shard_path.is_file():
            raise ModelError(
                f"shard {shard} named in {index_path.name} is missing from {folder}",
                hint="download every shard listed in the index",
            )
        files.append(shard_path)
    return files


#: files a tokenizer may come as; llama.cpp's converter needs one of them to write the GGUF's vocabulary
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def check_tokenizer_files(folder: Path) -> None:
    """The folder has a tokenizer, and its JSON files are JSON objects (before the converter reads them)."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(
            f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])} ...): llama.cpp cannot load a GGUF "
            "without one, so aqrecipe does not write it",
            hint="copy the tokenizer files from the model's repository into the folder",
        )
    for name in _TOKENIZER_JSON:
        path = folder / name
        if path.is_file() and not isinstance(load_json(path, hint=f"restore {name} from the model repository"), dict):
            raise CorruptFileError(f"{path} is not a JSON object", hint=f"restore {name} from the model repository")


def sampled_weight_digest(fingerprint: str, files: Sequence[Path], *, samples: int = 16, window: int = 4096) -> str:
    """sha256 over ``fingerprint`` and, per weight file, its size and ``samples`` windows of ``window``
    bytes spread evenly over it: cheap (a few KiB per file), stable when the files are copied, and
    different for checkpoints whose values differ almost everywhere (a fine-tune of the same base)."""
    digest = hashlib.sha256(fingerprint.encode())
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}|{size}\n".encode())
        with open(path, "rb") as f:
            for k in range(samples):
                f.seek(max(0, (size - window) * k // max(1, samples - 1)))
                digest.update(f.read(window))
    return digest.hexdigest()


def values_key(source: WeightSource) -> str:
    """The key of a cache that depends on a model's values, not only its structure: the fingerprint
    (config, names, shapes) plus :func:`sampled_weight_digest` of its weight files. A base model and
    its fine-tune share the fingerprint, never this key."""
    return sampled_weight_digest(source.fingerprint(), source.weight_files)
