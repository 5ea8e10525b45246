"""Fuzz the readers of untrusted files (issue #8): GGUF models, GGUF imatrix, legacy .dat imatrix.

Each test starts from a valid file, mutates it (huge values written over its
length and count fields, byte flips, inserted bytes, truncation) and requires the
reader to return or raise an ``AqrecipeError`` subclass - never IndexError,
ValueError, KeyError, UnicodeDecodeError, struct.error or MemoryError - while
allocating no more than a small multiple of what the file could describe.

Profiles: by default few, derandomized examples (``make test`` stays fast and
deterministic); ``AQRECIPE_FUZZ=1`` or ``HYPOTHESIS_PROFILE=fuzz`` (``make fuzz``)
runs ``AQRECIPE_FUZZ_EXAMPLES`` (default 3000) random examples per test.
"""

from __future__ import annotations

import itertools
import os
import signal
import struct
import tracemalloc
import warnings
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aqrecipe.errors import AqrecipeError, GGUFFormatError, ImatrixError
from aqrecipe.formats.gguf_read import open_gguf
from aqrecipe.imatrix import ImatrixData, ImatrixEntry, decode_dat, encode_dat, load_imatrix, save_imatrix
from aqrecipe.cli.inspect import inspect_path

_COMMON = dict(deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz-readers-quick", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("AQRECIPE_FUZZ_EXAMPLES", "3000")),
                          derandomize=False, **_COMMON)
_FUZZING = os.environ.get("AQRECIPE_FUZZ") == "1" or os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
FUZZ = settings.get_profile("fuzz" if _FUZZING else "fuzz-readers-quick")

# Peak Python/numpy allocation allowed while reading one mutated file: the inputs
# are a few KB, so anything near this means a header count was trusted.
_ALLOC_LIMIT = 8 << 20
_HUGE = [0, 1, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**64 - 1]
_SEQ = itertools.count()


# ------------------------------------------------------------------ valid files
def _model_gguf(folder: Path) -> Path:
    """A small llama-style GGUF: scalars, strings, arrays, F32/F16/Q8_0 tensors."""
    path = folder / "model.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("fuzz")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("fuzz.flag", True)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "bc", "\u00e9"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0])
    w.add_array("fuzz.bools", [True, False, True])
    w.add_array("fuzz.nested", [[1, 2], [3]])
    w.add_tensor("token_embd.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    q8 = np.frombuffer(struct.pack("<e", 0.5) + bytes(range(32)), dtype=np.uint8)
    w.add_tensor("blk.0.ffn_down.weight", q8.reshape(1, 34), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _imatrix_data() -> ImatrixData:
    entries = {
        "blk.0.ffn_down.weight": ImatrixEntry(np.arange(1, 9, dtype=np.float32)[None, :] * 64,
                                              np.array([64], np.float32), np.ones((1, 8), np.float32)),
        "blk.0.ffn_up_exps.weight": ImatrixEntry(np.full((2, 4), 3.0, np.float32),
                                                 np.array([64, 0], np.float32)),
    }
    return ImatrixData(entries, ["calib.txt"], 1, 64)


def _int_slots_gguf(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every integer in the header: lengths, counts, types, dims, offsets."""
    reader = gguf.GGUFReader(str(path))
    base = reader.data.ctypes.data
    fields = list(reader.fields.values()) + [t.field for t in reader.tensors]
    slots = {(int(p.ctypes.data - base), p.dtype.itemsize) for f in fields for p in f.parts
             if p.dtype.kind in "ui" and p.dtype.itemsize >= 4 and p.size == 1}
    del reader
    return sorted(slots)


def _int_slots_dat(buf: bytes) -> list[tuple[int, int]]:
    """(offset, 4) of every int32 of a .dat: entry count, name lengths, ncall, nval, trailer."""
    slots, pos = [(0, 4)], 4
    for _ in range(struct.unpack_from("<i", buf, 0)[0]):
        name_len = struct.unpack_from("<i", buf, pos)[0]
        slots += [(pos, 4), (pos + 4 + name_len, 4), (pos + 8 + name_len, 4)]
        nval = struct.unpack_from("<i", buf, pos + 8 + name_len)[0]
        pos += 12 + name_len + 4 * nval
    return slots + [(pos, 4), (pos + 4, 4)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, list[tuple[int, int]], Path]]:
    folder = tmp_path_factory.mktemp("fuzz_readers")
    model = _model_gguf(folder)
    imatrix = save_imatrix(_imatrix_data(), folder / "imatrix.gguf")
    dat = encode_dat(_imatrix_data())
    scratch = folder / "mutants"
    scratch.mkdir()
    return {
        "model": (model.read_bytes(), _int_slots_gguf(model), scratch),
        "imatrix": (imatrix.read_bytes(), _int_slots_gguf(imatrix), scratch),
        "dat": (dat, _int_slots_dat(dat), scratch),
    }


# ------------------------------------------------------------------ mutations
def _overwrite(buf: bytearray, off: int, size: int, value: int) -> None:
    buf[off:off + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")


@st.composite
def _mutants(draw: st.DrawFn, base: bytes, slots: list[tuple[int, int]]) -> bytes:
    buf = bytearray(base)
    lengths, flips = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    if lengths:  # the header's own integers: counts, lengths, type ids, dims, offsets
        for _ in range(draw(st.integers(1, 3))):
            off, size = draw(st.sampled_from(slots))
            _overwrite(buf, off, size, draw(st.sampled_from(_HUGE) | st.integers(0, 2 ** (8 * size) - 1)))
    if flips:
        for pos, value in draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)),
                                        min_size=1, max_size=6)):
            buf[pos] = value
        if draw(st.booleans()):
            pos = draw(st.integers(0, len(buf)))
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=12))
    if draw(st.booleans()):
        del buf[draw(st.integers(0, len(buf))):]
    return bytes(buf)


class _Hung(BaseException):
    """Raised by SIGALRM: a BaseException so that no reader's ``except Exception`` hides it."""


def _alarm(signum: int, frame: object) -> None:
    raise _Hung("the reader did not finish: it loops on a header count (see _HANG_GUARD_S)")


# Not a timing assertion: a guard that turns an endless loop (gguf-py on a huge
# array count) into a failure instead of a hung test run.
_HANG_GUARD_S = 120


def _read_bounded(read: Callable[[Path], object], data: bytes, folder: Path, suffix: str) -> None:
    """Run ``read`` on ``data`` as a file: it returns or raises AqrecipeError, within the allocation limit."""
    path = folder / f"m{next(_SEQ)}{suffix}"
    path.write_bytes(data)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(_HANG_GUARD_S)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # numpy overflow = garbage read silently
            read(path)
    except AqrecipeError as exc:
        assert exc.hint, f"{type(exc).__name__} without a hint: {exc}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        path.unlink()
    assert peak < _ALLOC_LIMIT, f"reading a {len(data)}-byte file allocated {peak} bytes"


def _draw(corpus: dict, name: str, data: st.DataObject) -> tuple[bytes, Path]:
    base, slots, folder = corpus[name]
    return data.draw(_mutants(base, slots), label=f"{name} mutant"), folder


# ------------------------------------------------------------------ the fuzz tests
# (corpus entry, reader, suffix): each reader on each kind of file it must survive.
_SWEEP = [("model", inspect_path, ".gguf"), ("imatrix", load_imatrix, ".gguf"), ("dat", load_imatrix, ".dat")]
_FUZZED = [*_SWEEP, ("imatrix", inspect_path, ".gguf")]


@pytest.mark.parametrize("name,read,suffix", _FUZZED,
                         ids=[f"{read.__name__}-{name}" for name, read, _ in _FUZZED])
@FUZZ
@given(data=st.data())
def test_reader_survives_mutated_file(corpus: dict, name: str, read: Callable, suffix: str,
                                      data: st.DataObject) -> None:
    mutant, folder = _draw(corpus, name, data)
    _read_bounded(read, mutant, folder, suffix)


@FUZZ
@given(raw=st.binary(max_size=256))
def test_decode_dat_survives_arbitrary_bytes(raw: bytes) -> None:
    try:
        decode_dat(raw)
    except ImatrixError:
        pass


# ------------------------------------------------------------------ every length field, every huge value
@pytest.mark.parametrize("name,read,suffix", _SWEEP, ids=[n for n, _, _ in _SWEEP])
def test_every_header_integer_set_to_huge_values(corpus: dict, name: str, read: Callable, suffix: str) -> None:
    """Deterministic sweep: each count / length / type / dim / offset of the file set to each huge value."""
    base, slots, folder = corpus[name]
    for off, size in slots:
        for value in _HUGE:
            buf = bytearray(base)
            _overwrite(buf, off, size, value)
            _read_bounded(read, bytes(buf), folder, suffix)


def test_huge_bool_array_count_is_refused_not_looped_on(corpus: dict) -> None:
    """Regression: gguf-py loops forever (memory growing) on a 1-byte-item array whose count passes EOF."""
    base, _, folder = corpus["model"]
    path = folder / "bools.gguf"
    path.write_bytes(base)
    reader = gguf.GGUFReader(str(path))
    count = reader.fields["fuzz.bools"].parts[4]  # [key len, key, type, item type, count, items...]
    off = int(count.ctypes.data - reader.data.ctypes.data)
    del reader, count
    buf = bytearray(base)
    _overwrite(buf, off, 8, 2**63 - 1)
    path.write_bytes(bytes(buf))
    with pytest.raises(GGUFFormatError, match=r"fuzz\.bools \(9223372036854775807 items\)"):
        open_gguf(path)
    _read_bounded(inspect_path, bytes(buf), folder, ".gguf")


# ------------------------------------------------------------------ regressions for what the fuzz tests found
def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_non_utf8_dataset_name_is_an_imatrix_error(corpus: dict) -> None:
    """Found by test_reader_survives_mutated_file[inspect_path-imatrix]:
    UnicodeDecodeError leaked from field.contents()."""
    base, _, folder = corpus["imatrix"]
    assert base.count(b"calib.txt") == 1
    path = _write(folder, "bad-dataset.gguf", base.replace(b"calib.txt", b"\x80alib.txt"))
    for read in (load_imatrix, inspect_path):
        with pytest.raises(ImatrixError, match="metadata imatrix.datasets cannot be read"):
            read(path)


def test_chunk_count_of_the_wrong_type_is_an_imatrix_error(corpus: dict) -> None:
    """imatrix.chunk_count retyped u32 -> f32 (a NaN or a fraction would crash int())."""
    base, _, folder = corpus["imatrix"]
    key = b"imatrix.chunk_count"
    at = base.index(key) + len(key)
    assert struct.unpack_from("<I", base, at)[0] == 4  # GGUF type id of u32
    buf = bytearray(base)
    buf[at:at + 8] = struct.pack("<If", 6, float("nan"))
    with pytest.raises(ImatrixError, match="imatrix.chunk_count is nan, expected a non-negative integer"):
        load_imatrix(_write(folder, "bad-count.gguf", bytes(buf)))


def test_fractional_counts_are_an_imatrix_error(tmp_path: Path) -> None:
    """A count of 1e-30 tokens made in_sum2 / counts overflow to inf (numpy warned, nothing failed)."""
    data = ImatrixData({"blk.0.ffn_down.weight": ImatrixEntry(np.full((1, 4), 1e10, np.float32),
                                                               np.array([1e-30], np.float32))}, [], 1, 64)
    path = save_imatrix(data, tmp_path / "fraction.gguf")
    with pytest.raises(ImatrixError, match="counts holds fractions"):
        load_imatrix(path)


def test_dat_values_that_overflow_once_scaled_are_an_imatrix_error() -> None:
    """Found by test_reader_survives_mutated_file[load_imatrix-dat]: 3e38 * chunk size became inf in in_sum2."""
    name = b"blk.0.ffn_down.weight"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, 2)
    raw += struct.pack("<ff", 1.0, 3e38) + struct.pack("<ii", 1, 0)
    with pytest.raises(ImatrixError, match="overflow float32 once multiplied by the chunk size 512"):
        decode_dat(raw)
    assert decode_dat(raw.replace(struct.pack("<f", 3e38), struct.pack("<f", 3e30))).entries[name.decode()]


# ------------------------------------------------------------------ a cargo-fuzz finding, through the binding
@pytest.mark.parametrize("type_name,value", [("F16", 9.887675e31), ("F16", -65520.0), ("BF16", 3.4028235e38)])
def test_float_types_refuse_weights_they_would_store_as_infinity(type_name: str, value: float) -> None:
    """fuzz/encode found finite weights that F16 (BF16 near f32::MAX) wrote as +-inf; now a CodecError."""
    from aqrecipe.quant import codecs
    from aqrecipe.errors import CodecError

    x = np.array([[1.0, value]], dtype=np.float32)
    with pytest.raises(CodecError, match=f"row 0, column 1 is outside the {type_name} range") as info:
        codecs.quantize(x, type_name)
    assert "BF16 or F32" in (info.value.hint or "")
    ok = codecs.dequantize(codecs.quantize(np.array([[65504.0, -1.0]], np.float32), type_name), type_name, (1, 2))
    assert np.isfinite(ok).all()


# ------------------------------------------------------------------ the inputs are valid to begin with
def test_unmutated_inputs_read_back(corpus: dict) -> None:
    """The fuzz tests start from files the readers accept (else they would test nothing)."""
    folder = corpus["model"][2]
    for name, suffix in (("model", ".gguf"), ("imatrix", ".gguf"), ("dat", ".dat")):
        path = folder / f"valid-{name}{suffix}"
        path.write_bytes(corpus[name][0])
        if name == "model":
            info, _ = inspect_path(path)
            assert info["n_tensors"] == 3 and info["metadata"]["fuzz.flag"] is True
        else:
            assert set(load_imatrix(path).entries) == set(_imatrix_data().entries)
    assert len(corpus["model"][1]) > 20 and len(corpus["dat"][1]) == 9
