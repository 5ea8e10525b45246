"""aqrecipe.models.safetensors_io.read_tensor: plain reads, chunked widening, short files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.errors import CorruptFileError
from aqrecipe.models import safetensors_io
from aqrecipe.models.safetensors_io import read_header, read_tensor


def _write(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header, offset, blobs = {}, 0, []
    for name, (dtype, stored) in tensors.items():
        raw = stored.tobytes()
        header[name] = {"dtype": dtype, "shape": list(stored.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _reference(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Three dtypes, sizes that are not multiples of the chunk, and the expected float32 values."""
    rng = np.random.default_rng(7)
    f32 = rng.standard_normal((5, 13)).astype("<f4")
    f16 = rng.standard_normal((3, 11)).astype("<f2")
    # bf16 values: float32s whose low 16 bits are zero, stored as their high halves
    bf32 = (rng.standard_normal((4, 9)).astype("<f4").view("<u4") & 0xFFFF0000).view("<f4")
    bf16 = (bf32.view("<u4") >> 16).astype("<u2")
    path = tmp_path / "m.safetensors"
    _write(path, {"a": ("F32", f32), "b": ("F16", f16), "c": ("BF16", bf16), "e": ("F32", np.zeros((0, 3), "<f4"))})
    expected = {"a": f32.astype(np.float32), "b": f16.astype(np.float32), "c": bf32.astype(np.float32),
                "e": np.zeros((0, 3), np.float32)}
    return path, expected


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_read_tensor_is_exact_across_chunk_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(safetensors_io, "_CHUNK_ELEMENTS", chunk)
    path, expected = _reference(tmp_path)
    for raw in read_header(path):
        values = read_tensor(raw)
        assert values.dtype == np.float32 and values.shape == expected[raw.name].shape
        assert values.flags.c_contiguous and values.flags.writeable
        assert values.tobytes() == expected[raw.name].tobytes(), raw.name


def test_read_tensor_holds_no_map_of_the_file(tmp_path: Path) -> None:
    # the result owns its memory: replacing the file afterwards cannot change it
    path, expected = _reference(tmp_path)
    raw = next(r for r in read_header(path) if r.name == "a")
    values = read_tensor(raw)
    path.write_bytes(b"\0" * path.stat().st_size)
    np.testing.assert_array_equal(values, expected["a"])


def test_file_shrunk_after_header_is_corrupt(tmp_path: Path) -> None:
    path, _ = _reference(tmp_path)
    raws = {r.name: r for r in read_header(path)}
    cut = raws["c"].offset + 3  # inside the last non-empty tensor's data
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    with pytest.raises(CorruptFileError, match="'c' is cut short"):
        read_tensor(raws["c"])
