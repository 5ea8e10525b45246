"""write_gguf: header, the source's metadata (llama.cpp's keys, carried over), ours, then tensors one by one."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import gguf
import numpy as np

from aqrecipe.quant.blocktypes import file_type_for
from aqrecipe.quant.sizes import tensor_bytes
from aqrecipe.errors import ByteLengthError, ShapeMismatchError
from aqrecipe.models.protocol import WeightSource
from aqrecipe.formats.fileio import atomic_path, check_output_folder

log = logging.getLogger(__name__)

QUANTIZATION_VERSION = 2


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor to write: names, HF-orientation shape [rows, row_len] and GGML type."""

    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    type_name: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


class PlannedTensorLike(Protocol):
    """What the writer needs of a plan entry (``aqrecipe.plan``'s PlannedTensor fits)."""

    gguf_name: str
    hf_name: str
    shape: Sequence[int]  # HF orientation / numpy order: [rows, row_len]
    type_name: str


def guess_file_type(planned: Sequence[PlannedTensorLike]) -> int:
    """llama.cpp's general.file_type for the most common type among the matrices."""
    counts = Counter(p.type_name for p in planned if len(p.shape) >= 2)
    if not counts:
        return int(gguf.LlamaFileType.ALL_F32)
    top = max(sorted(counts), key=lambda name: counts[name])
    return int(file_type_for(top))


def write_gguf(
    dest: str | Path,
    source: WeightSource,
    planned: Sequence[PlannedTensorLike],
    produce: Callable[[PlannedTensorLike], np.ndarray],
    metadata: Mapping[str, Any] | None = None,
    file_type: int | None = None,
) -> Path:
    """Write a GGUF for ``source`` with the tensors of ``planned``, atomically.

    ``produce(p)`` returns one tensor's data: raw bytes as uint8 ``[rows, row_bytes]``
    (any shape with the right byte count), or float values of ``p.shape`` when
    ``p.type_name`` is F32/F16. Tensors are requested in ``planned`` order and
    written as they come, so only one is in memory at a time. ``metadata`` keys
    (e.g. ``aqrecipe.recipe``) are added after the standard ones and may override
    ``general.*`` keys. Returns the final path.
    """
    dest = Path(dest)
    check_output_folder(dest)
    metadata = dict(metadata or {})
    with atomic_path(dest) as tmp:
        writer = gguf.GGUFWriter(tmp, source.arch.gguf_arch_name)
        try:
            _add_kv(writer, source, planned, metadata, file_type)
            for p in planned:
                writer.add_tensor_info(
                    p.gguf_name,
                    [int(d) for d in p.shape],
                    np.dtype(np.float32),  # ignored: raw_dtype gives the stored type
                    tensor_bytes(p.type_name, p.shape),
                    raw_dtype=gguf.GGMLQuantizationType[p.type_name],
                )
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for index, p in enumerate(planned, 1):
                log.debug("writing %s (%d/%d) as %s", p.gguf_name, index, len(planned), p.type_name)
                writer.write_tensor_data(_as_stored(p, produce(p)))
            writer.flush()
        finally:
            writer.close()
    log.info("wrote %s (%d tensors)", dest, len(planned))
    return dest


def _add_kv(
    writer: gguf.GGUFWriter,
    source: WeightSource,
    planned: Sequence[PlannedTensorLike],
    metadata: Mapping[str, Any],
    file_type: int | None,
) -> None:
    carried = source.gguf_metadata()
    if "general.name" not in metadata and "general.name" not in carried:
        writer.add_name(source.path.stem)
    for key, value in carried.items():
        if key in ("general.architecture", "general.type") or key in metadata:
            continue  # GGUFWriter writes the architecture itself; the type is set below
        writer.add_key_value(key, value.value, value.type, sub_type=value.sub_type)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(guess_file_type(planned) if file_type is None else int(file_type))
    writer.add_quantization_version(QUANTIZATION_VERSION)
    if not any(key.startswith("tokenizer.ggml.") for key in carried):
        log.warning("%s has no tokenizer; the GGUF will have none", source.path)
    for key in sorted(metadata):
        _add_value(writer, key, metadata[key])


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """One metadata entry, typed by its Python value (dicts become JSON strings)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int) and value < 0:
        writer.add_int64(key, value)
    elif isinstance(value, int):
        writer.add_uint64(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, str):
        writer.add_key_value(key, value, gguf.GGUFValueType.STRING)  # empty strings too
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        writer.add_array(key, list(value))
    else:
        writer.add_key_value(key, json.dumps(value, sort_keys=True), gguf.GGUFValueType.STRING)


def _as_stored(p: PlannedTensorLike, data: np.ndarray) -> np.ndarray:
    """Check produced data against the plan; convert float values to F32/F16 storage."""
    expected = tensor_bytes(p.type_name, p.shape)
    data = np.asarray(data)
    if data.dtype == np.uint8:
        stored = np.ascontiguousarray(data)
    elif p.type_name in ("F32", "F16") and data.dtype.kind == "f":
        if tuple(data.shape) != tuple(int(d) for d in p.shape):
            raise ShapeMismatchError(
                f"{p.gguf_name}: produced shape {list(data.shape)}, planned {list(p.shape)}",
                hint="the producer returned another tensor's data",
            )
        stored = np.ascontiguousarray(data, dtype="<f4" if p.type_name == "F32" else "<f2")
    else:
        raise ShapeMismatchError(
            f"{p.gguf_name}: produced {data.dtype} data for type {p.type_name}",
            hint="quantized types must be produced as raw uint8 bytes",
        )
    if stored.nbytes != expected:
        raise ByteLengthError(
            f"{p.gguf_name}: produced {stored.nbytes} bytes, {p.type_name}{list(p.shape)} needs {expected}",
            hint="the codec and the plan disagree on the tensor's type or shape",
        )
    return stored
