"""Safetensors output: a Hugging Face model folder holding a plan's simulated (dequantized) weights.

The folder has the source's config.json (``torch_dtype`` set to the written dtype),
generation config and tokenizer files, and one ``model.safetensors`` with every
tensor of the source's checkpoint (HF names and orientation) dequantized to F32, F16 or BF16
(``output.dtype``; ``auto`` keeps the source's dtype) and the super weights restored. The header
is known from the checkpoint's own headers, so tensors stream to disk one at a time, by name. The folder is built
under a temporary name and renamed when complete: a failed run leaves nothing.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from aqrecipe.errors import OutputError
from aqrecipe.formats.fileio import atomic_folder, check_output_folder

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource
    from aqrecipe.plan import Plan

#: What the simulated stream yields: (HF tensor name, float32 values in HF orientation).
NamedTensor = tuple[str, np.ndarray]

DTYPES = ("auto", "F32", "F16", "BF16")
_TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def check_folder_output(dest: Path) -> None:
    """OutputError unless ``dest`` can become a model folder (checked before any work)."""
    dest = Path(dest)
    check_output_folder(dest, folder_ok=True)
    if dest.exists() and not (dest.is_dir() and (dest / "config.json").is_file()):
        raise OutputError(f"{dest} exists and is not a model folder",
                          hint="choose a new path; aqrecipe only replaces a model folder")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def copy_tokenizer(source: WeightSource, folder: Path) -> list[str]:
    """Copy the tokenizer files of ``source`` into ``folder``; the names copied."""
    src = Path(source.tokenizer_dir or source.path)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, folder / name)
            copied.append(name)
    return copied


def resolve_dtype(dtype: str, source_config: Mapping[str, Any]) -> str:
    """``auto`` -> the source's dtype from config.json (F32 when it names none or another one)."""
    if dtype not in DTYPES:
        raise OutputError(f"unknown output dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    named = str(source_config.get("torch_dtype") or source_config.get("dtype") or "float32")
    return {v: k for k, v in _TORCH_NAMES.items()}.get(named, "F32")


def encode(w: np.ndarray, dtype: str) -> bytes:
    """float32 -> little-endian bytes of ``dtype`` (BF16: round to nearest even)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if dtype == "F32":
        return w.astype("<f4").tobytes()
    if dtype == "F16":
        return w.astype("<f2").tobytes()
    bits = w.view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype("<u2").tobytes()


def _header(layout: Mapping[str, tuple[int, ...]], dtype: str, metadata: Mapping[str, str]) -> bytes:
    table: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, shape in layout.items():
        n = int(np.prod(shape)) * _ITEM_BYTES[dtype]
        table[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(table, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # data start 8-byte aligned


def write_safetensors(path: Path, layout: Mapping[str, tuple[int, ...]], tensors: Iterable[NamedTensor], dtype: str,
                      metadata: Mapping[str, str]) -> None:
    """Stream ``tensors`` (in ``layout``'s order, one in memory at a time) into one safetensors file."""
    header = _header(layout, dtype, metadata)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for (name, w), (planned, shape) in zip(tensors, layout.items(), strict=True):
            if name != planned or tuple(w.shape) != tuple(shape):
                raise AssertionError(f"{name}: tensor stream out of step with the checkpoint's tensors")
            f.write(encode(w, dtype))


def hf_layout(source: WeightSource) -> dict[str, tuple[int, ...]]:
    """The HF tensors written, by name (the order :func:`aqrecipe.apply.simulate.simulated_tensors` yields)."""
    from aqrecipe.calibration.hf_model import hf_tensor_shapes

    return dict(sorted(hf_tensor_shapes(source).items()))


def write_hf_folder(dest: Path, plan: Plan, source: WeightSource, tensors: Iterable[NamedTensor], *,
                    dtype: str = "auto", metadata: Mapping[str, str] | None = None) -> Path:
    """Write the HF folder ``dest`` (atomic) from the simulated ``tensors`` of ``plan``; returns it."""
    if plan.model_fingerprint != source.fingerprint():
        raise OutputError(f"the plan was compiled for another model than {source.path}",
                          hint="recompile the recipe (aqrecipe compile) for this model")
    dtype = resolve_dtype(dtype, source.config)
    config = {k: v for k, v in source.config.items() if k != "quantization_config"}
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = _TORCH_NAMES[dtype]
    check_folder_output(Path(dest))
    with atomic_folder(Path(dest)) as tmp:
        write_safetensors(tmp / "model.safetensors", hf_layout(source), tensors, dtype,
                          {"format": "pt", **(metadata or {})})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if (Path(source.path) / "generation_config.json").is_file():
            shutil.copyfile(Path(source.path) / "generation_config.json", tmp / "generation_config.json")
        copy_tokenizer(source, tmp)
    return Path(dest)


