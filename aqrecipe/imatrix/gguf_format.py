"""The GGUF imatrix format (llama.cpp's ``llama-imatrix`` default since 2025).

Metadata: ``general.type = "imatrix"``, ``imatrix.datasets`` (string array),
``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32). Per weight, in sorted
name order: ``<name>.in_sum2`` F32 with ggml shape ``[n_cols, n_mat]``,
``<name>.counts`` F32 ``[1, n_mat]`` and, when present, ``<name>.in_sum`` F32
``[n_cols, n_mat]`` (readers that predate it ignore unknown tensors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aqrecipe.errors import ImatrixError
from aqrecipe.formats.bounded import regular_file_size
from aqrecipe.imatrix.data import ImatrixData, ImatrixEntry

KEY_TYPE = "general.type"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIXES = (".in_sum2", ".counts", ".in_sum")


def write_gguf_imatrix(data: ImatrixData, dest: Path) -> None:
    """Write ``data`` to ``dest`` (the caller makes it atomic)."""
    import gguf

    writer = gguf.GGUFWriter(str(dest), arch="")
    writer.kv_data[0].pop("general.architecture", None)  # llama.cpp writes none for imatrix files
    writer.add_string(KEY_TYPE, "imatrix")
    # Always present: llama-quantize refuses a GGUF imatrix without imatrix.datasets
    # ("missing imatrix metadata"). gguf-py cannot write an empty array, so "no dataset
    # name" is written as [""] (what llama.cpp's .dat holds then) and read back as [].
    writer.add_array(KEY_DATASETS, [str(d) for d in data.datasets] or [""])
    writer.add_uint32(KEY_CHUNK_COUNT, int(data.chunk_count))
    writer.add_uint32(KEY_CHUNK_SIZE, int(data.chunk_size))
    for name in sorted(data.entries):
        e = data.entries[name]
        writer.add_tensor(f"{name}.in_sum2", e.in_sum2)  # numpy [n_mat, n_cols] = ggml [n_cols, n_mat]
        writer.add_tensor(f"{name}.counts", e.counts.reshape(e.n_mat, 1))
        if e.in_sum is not None:
            writer.add_tensor(f"{name}.in_sum", e.in_sum)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _bad(path: Path, what: str) -> ImatrixError:
    return ImatrixError(
        f"imatrix {str(path)!r} is malformed: {what}",
        hint="the file is damaged or not an imatrix; recompute it (aqrecipe imatrix compute) "
        "or convert it again from its source",
    )


def read_gguf_imatrix(path: Path) -> ImatrixData:
    import gguf

    from aqrecipe.formats.gguf_read import open_gguf

    path = Path(path)
    # mapped, not read whole, but every value is copied out: the same bound as a .dat
    size = regular_file_size(path, kind="imatrix", what="imatrix", error=ImatrixError)
    reader = open_gguf(path, error=lambda what: _bad(path, what))  # header checked before gguf-py reads it

    def field(key: str):
        f = reader.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except (ValueError, IndexError) as exc:  # e.g. a non-UTF-8 string (found by fuzzing)
            raise _bad(path, f"metadata {key} cannot be read ({type(exc).__name__}: {exc})") from None

    def count(key: str) -> int:
        value = field(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _bad(path, f"metadata {key} is {value!r}, expected a non-negative integer")
        return value

    kind = field(KEY_TYPE)
    if kind != "imatrix":
        arch = field("general.architecture")
        looks = f"; it looks like a {arch} model" if arch else ""
        raise ImatrixError(
            f"{str(path)!r} is a GGUF file but not an imatrix (general.type = {kind!r}{looks})",
            hint="pass an imatrix produced by llama-imatrix or aqrecipe imatrix compute",
        )
    datasets = field(KEY_DATASETS) or []
    if isinstance(datasets, str):
        datasets = [datasets]
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise _bad(path, f"metadata {KEY_DATASETS} is {datasets!r}, expected a list of strings")
    datasets = [d for d in datasets if d]  # [""] is our writer's "no dataset name"
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        suffix = next((s for s in SUFFIXES if t.name.endswith(s)), None)
        if suffix is None:
            continue  # llama.cpp ignores other tensors too
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise _bad(path, f"tensor {t.name} is {t.tensor_type.name}, expected F32")
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise _bad(path, f"tensor {t.name} extends beyond the end of the file (truncated?)")
        ne = [int(x) for x in t.shape]
        cols = ne[0]
        rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
        arr = np.array(t.data, dtype=np.float32).reshape(rows, cols)
        parts.setdefault(t.name[: -len(suffix)], {})[suffix] = arr
    entries: dict[str, ImatrixEntry] = {}
    for name in sorted(parts):
        p = parts[name]
        if ".in_sum2" not in p or ".counts" not in p:
            raise _bad(path, f"{name} has {'in_sum2' if '.in_sum2' in p else 'counts'} "
                             "but not the matching sums/counts tensor")
        in_sum2, counts = p[".in_sum2"], p[".counts"].reshape(-1)
        if counts.size != in_sum2.shape[0] and counts.size != 1:
            raise _bad(path, f"{name}: {counts.size} counts for {in_sum2.shape[0]} matrices")
        if counts.size == 1 and in_sum2.shape[0] > 1:
            counts = np.repeat(counts, in_sum2.shape[0])  # old files: one count for all experts
        in_sum = p.get(".in_sum")
        if in_sum is not None and in_sum.size != in_sum2.size:
            raise _bad(path, f"{name}: in_sum and in_sum2 sizes differ")
        _check_values(path, name, in_sum2, counts, in_sum)
        entries[name] = ImatrixEntry(in_sum2, counts,
                                     None if in_sum is None else in_sum.reshape(in_sum2.shape))
    if not entries:
        raise _bad(path, "no in_sum2/counts tensors")
    return ImatrixData(entries, datasets,
                       count(KEY_CHUNK_COUNT), count(KEY_CHUNK_SIZE))


def _check_values(path: Path, name: str, in_sum2: np.ndarray, counts: np.ndarray,
                  in_sum: np.ndarray | None) -> None:
    arrays = [("in_sum2", in_sum2), ("counts", counts)] + ([("in_sum", in_sum)] if in_sum is not None else [])
    for label, arr in arrays:
        if not np.isfinite(arr).all():
            raise _bad(path, f"{name}.{label} holds non-finite values")
    if (counts < 0).any() or (in_sum2 < 0).any():
        raise _bad(path, f"{name} has negative sums of squares or counts")
    if (counts != np.floor(counts)).any():  # token counts; a fraction would blow up in_sum2 / counts
        raise _bad(path, f"{name}.counts holds fractions; counts are whole numbers of tokens")
