"""The converter's tensor table and hyperparameters, cached so ``compile`` reads headers only.

Running llama.cpp's converter means importing torch (seconds on a small machine) even on meta
tensors; ``compile`` must stay well under a second on a 70B-shaped header. So the first
conversion of a folder stores what planning needs — every GGUF tensor's name, shape and HF
sources, and the non-tokenizer metadata — under ``~/.cache/aqrecipe/converted/``, keyed by the
converter version, config.json and the safetensors headers. Later opens of the same folder read
that JSON and run the converter only when tensor data or the tokenizer is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import gguf

from aqrecipe.formats.fileio import atomic_write_text
from aqrecipe.models.converter.bundle import CONVERTER_VERSION

_FORMAT = 3  # 3: a merged-expert tensor lists every expert's HF tensor as a source, shards or not


ENV_DIR = "AQRECIPE_CONVERTED_DIR"


def cache_dir() -> Path:
    """Where conversion tables are kept (``$AQRECIPE_CONVERTED_DIR`` overrides)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "aqrecipe" / "converted"


def table_key(config: Mapping[str, Any], headers: Iterable[tuple[str, str, tuple[int, ...]]]) -> str:
    """sha256 of what the converter's table depends on: its version, config.json, the HF headers."""
    digest = hashlib.sha256(f"converter {CONVERTER_VERSION} table {_FORMAT}\n".encode())
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for name, dtype, shape in sorted(headers):
        digest.update(f"{name}|{dtype}|{list(shape)}\n".encode())
    return digest.hexdigest()


def _value_to_json(value: gguf.GGUFValue) -> dict[str, Any]:
    raw = value.value
    if isinstance(raw, (list, tuple)):
        raw = [v.item() if hasattr(v, "item") else v for v in raw]
    elif hasattr(raw, "item"):
        raw = raw.item()
    return {"value": raw, "type": int(value.type),
            "sub_type": None if value.sub_type is None else int(value.sub_type)}


def _value_from_json(data: Mapping[str, Any]) -> gguf.GGUFValue:
    sub = data.get("sub_type")
    return gguf.GGUFValue(data["value"], gguf.GGUFValueType(data["type"]),
                          None if sub is None else gguf.GGUFValueType(sub))


def save_table(key: str, tensors: Iterable[Any], metadata: Mapping[str, gguf.GGUFValue], hf_architecture: str) -> None:
    """Store a conversion's table (``ConvertedTensor``s) and its non-tokenizer metadata."""
    data = {
        "format": _FORMAT,
        "hf_architecture": hf_architecture,
        "tensors": [[t.gguf_name, list(t.shape), list(t.hf_sources)] for t in tensors],
        "metadata": {k: _value_to_json(v) for k, v in metadata.items() if not k.startswith("tokenizer.")},
    }
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_dir() / f"{key}.json", json.dumps(data, separators=(",", ":")))
    except OSError:
        pass  # a read-only cache only costs the next compile its speed


def load_table(key: str) -> tuple[list[tuple[str, tuple[int, ...], tuple[str, ...]]], dict[str, gguf.GGUFValue], str] | None:
    """The cached (tensors, metadata, hf_architecture) for ``key``, or None (absent or unreadable)."""
    path = cache_dir() / f"{key}.json"
    try:
        if path.stat().st_size > 64 << 20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != _FORMAT:
            return None
        tensors = [(str(n), tuple(int(d) for d in shape), tuple(str(s) for s in srcs))
                   for n, shape, srcs in data["tensors"]]
        metadata = {str(k): _value_from_json(v) for k, v in data["metadata"].items()}
        return tensors, metadata, str(data["hf_architecture"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
