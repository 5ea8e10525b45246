"""The foundation codecs against the gguf package's numpy reference.

Decoders must equal ``gguf.quants.dequantize`` exactly; encoders of the types
the reference can encode must equal ``gguf.quants.quantize`` byte for byte
(without importance). The searched K-quants and IQ4_NL are held to measured
error bounds and must honour the importance vector.
"""

from __future__ import annotations

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aqrecipe.quant import codecs
from aqrecipe.quant.blocktypes import layout
from aqrecipe.errors import (
    ByteLengthError,
    CodecError,
    ImportanceError,
    NonFiniteWeightError,
    RowLengthError,
    ShapeMismatchError,
    UnknownTypeError,
)

FLOAT_TYPES = ["F32", "F16", "BF16"]
REFERENCE_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]  # gguf encodes these
SEARCHED_TYPES = ["Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]
ALL_TYPES = FLOAT_TYPES + REFERENCE_TYPES + SEARCHED_TYPES

# Measured relative RMSE on standard normal rows (plain / with skewed importance) plus a margin.
RMSE_BOUND = {
    "F32": 0.0, "F16": 3e-4, "BF16": 2.5e-3, "Q8_0": 0.0065, "Q5_1": 0.042, "Q5_0": 0.047,
    "Q4_1": 0.085, "Q4_0": 0.094, "IQ4_NL": 0.086, "Q6_K": 0.022, "Q5_K": 0.042, "Q4_K": 0.085,
}


def qtype(name: str) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[name]


def shapes_for(name: str) -> list[tuple[int, ...]]:
    bw = layout(name).block_weights
    if bw == 1:
        return [(4, 576), (3, 5), (1, 1536)]
    if bw == 32:
        return [(7, 576), (3, 32), (2, 1536)]
    return [(5, 1536), (2, 256), (1, 512)]


def structured(shape: tuple[int, ...], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    outlier = rng.standard_normal(shape).astype(np.float32) * 0.02
    outlier.flat[rng.integers(n)] = 8.0
    sparse = np.where(rng.uniform(size=shape) < 0.9, 0.0, rng.standard_normal(shape)).astype(np.float32)
    return {
        "normal": rng.standard_normal(shape).astype(np.float32),
        "laplace": rng.laplace(size=shape).astype(np.float32) * 0.05,
        "uniform_pos": rng.uniform(0.1, 2.0, shape).astype(np.float32),
        "zeros": np.zeros(shape, np.float32),
        "constant": np.full(shape, -0.375, np.float32),
        "ramp": np.linspace(-3, 5, n, dtype=np.float32).reshape(shape),
        "outlier": outlier,
        "sparse": sparse,
        "huge": (rng.uniform(-1, 1, shape) * 60000).astype(np.float32),
    }


def reference_bytes(x: np.ndarray, name: str) -> np.ndarray:
    ref = gguf.quants.quantize(x, qtype(name))
    return np.ascontiguousarray(ref).view(np.uint8).reshape(x.shape[0], -1)


def reference_decode(data: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name == "F16":
        return data.view(np.float16).astype(np.float32).reshape(shape)
    if name == "F32":
        return data.view(np.float32).reshape(shape)
    return gguf.quants.dequantize(data, qtype(name)).reshape(shape)


def rel_rmse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x - y) ** 2) / np.mean(x.astype(np.float64) ** 2)))


# --------------------------------------------------------------------------- decode == gguf


@pytest.mark.parametrize("name", ALL_TYPES)
def test_decode_equals_gguf_dequantize(name: str) -> None:
    for i, shape in enumerate(shapes_for(name)):
        for kind, x in structured(shape, seed=i).items():
            data = codecs.quantize(x, name)
            assert data.dtype == np.uint8 and data.shape == (shape[0], codecs.row_bytes(name, shape[1]))
            ours = codecs.dequantize(data, name, shape)
            ref = reference_decode(data, name, shape)
            assert ours.dtype == np.float32 and ours.shape == shape
            np.testing.assert_array_equal(ours, ref, err_msg=f"{name} {shape} {kind}")


@pytest.mark.parametrize("name", SEARCHED_TYPES + REFERENCE_TYPES)
def test_decode_equals_gguf_on_random_bytes(name: str) -> None:
    """Any bytes decode like the reference (scales kept finite so NaN != NaN is moot)."""
    lay = layout(name)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (6, 3 * lay.block_bytes), dtype=np.uint8)
    blocks = data.reshape(-1, lay.block_bytes)
    # Overwrite the f16 fields with finite values.
    offset = 0
    for field, size in lay.fields:
        if field in ("d", "dmin", "m") and size == 2:
            blocks[:, offset : offset + 2] = (
                rng.uniform(-2, 2, blocks.shape[0]).astype(np.float16).view(np.uint8).reshape(-1, 2)
            )
        offset += size
    shape = (6, 3 * lay.block_weights)
    np.testing.assert_array_equal(codecs.dequantize(data, name, shape), reference_decode(data, name, shape))


# --------------------------------------------------------------------------- encode == gguf


@pytest.mark.parametrize("name", REFERENCE_TYPES + ["F16", "BF16", "F32"])
def test_encode_equals_gguf_quantize(name: str) -> None:
    for i, shape in enumerate(shapes_for(name)):
        for kind, x in structured(shape, seed=10 + i).items():
            np.testing.assert_array_equal(
                codecs.quantize(x, name), reference_bytes(x, name), err_msg=f"{name} {shape} {kind}"
            )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=64, max_size=64),
    st.sampled_from(REFERENCE_TYPES),
)
def test_encode_equals_gguf_property(values: list[float], name: str) -> None:
    x = np.array(values, np.float32).reshape(2, 32)
    # The reference's 1/d overflows for blocks of subnormal size (then its bytes are undefined).
    amax = np.abs(x).max(axis=1)
    assume(bool(np.all((amax == 0) | (amax > 1e-30))))
    np.testing.assert_array_equal(codecs.quantize(x, name), reference_bytes(x, name))


# --------------------------------------------------------------------------- quality


@pytest.mark.parametrize("name", ALL_TYPES)
def test_reconstruction_error_bounds(name: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 1536)).astype(np.float32)
    imp = (rng.uniform(0, 1, 1536) ** 4 * 100).astype(np.float32)
    bound = RMSE_BOUND[name]
    plain = rel_rmse(x, codecs.dequantize(codecs.quantize(x, name), name, x.shape))
    assert plain <= bound, f"{name}: {plain}"
    weighted = rel_rmse(x, codecs.dequantize(codecs.quantize(x, name, imp), name, x.shape))
    assert weighted <= 1.15 * bound + 1e-7, f"{name} with importance: {weighted}"


@pytest.mark.parametrize("name", SEARCHED_TYPES + REFERENCE_TYPES)
def test_importance_lowers_weighted_error(name: str) -> None:
    rng = np.random.default_rng(8)
    row = layout(name).block_weights * 8
    x = rng.standard_normal((16, row)).astype(np.float32)
    imp = np.full(row, 0.05, np.float32)
    imp[rng.choice(row, row // 16, replace=False)] = 20.0  # a few columns matter a lot

    def wmse(y: np.ndarray) -> float:
        return float(np.mean(imp * (x - y) ** 2))

    plain = wmse(codecs.dequantize(codecs.quantize(x, name), name, x.shape))
    weighted = wmse(codecs.dequantize(codecs.quantize(x, name, imp), name, x.shape))
    assert weighted < 0.85 * plain, f"{name}: {weighted} vs {plain}"


@pytest.mark.parametrize("name", SEARCHED_TYPES)
def test_search_beats_round_to_nearest(name: str) -> None:
    """The searched types do better than the affine/symmetric reference of similar size."""
    x = np.random.default_rng(4).standard_normal((16, 1536)).astype(np.float32)
    ours = rel_rmse(x, codecs.dequantize(codecs.quantize(x, name), name, x.shape))
    rival = {"Q4_K": "Q4_1", "Q5_K": "Q5_1", "Q6_K": "Q5_1", "IQ4_NL": "Q4_0"}[name]
    theirs = rel_rmse(x, codecs.dequantize(codecs.quantize(x, rival), rival, x.shape))
    assert ours < theirs, f"{name} {ours} vs {rival} {theirs}"


@pytest.mark.parametrize("name", ALL_TYPES)
def test_awkward_inputs_decode_finite(name: str) -> None:
    bw = layout(name).block_weights
    n = max(bw, 32) * 2
    rows = np.stack(
        [
            np.zeros(n),
            np.full(n, 1e-40),  # denormal
            np.where(np.arange(n) % 2 == 0, 60000.0, -60000.0),
            np.r_[np.zeros(n - 1), 1e-3],
            np.r_[60000.0, np.full(n - 1, 1e-6)],
        ]
    ).astype(np.float32)
    y = codecs.dequantize(codecs.quantize(rows, name), name, rows.shape)
    assert np.isfinite(y).all()
    assert np.abs(y).max() <= 60000 * 1.1


# --------------------------------------------------------------------------- API shape handling


def test_one_dimensional_input_is_one_row() -> None:
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    q = codecs.quantize(x, "Q8_0")
    assert q.shape == (68,)
    np.testing.assert_array_equal(q, codecs.quantize(x[None, :], "Q8_0")[0])
    assert codecs.dequantize(q, "Q8_0", 64).shape == (64,)


def test_non_contiguous_and_float64_inputs() -> None:
    base = np.random.default_rng(1).standard_normal((64, 96))
    x = base.T  # (96, 64) Fortran-ordered float64
    expect = codecs.quantize(np.ascontiguousarray(x, dtype=np.float32), "Q4_0")
    np.testing.assert_array_equal(codecs.quantize(x, "Q4_0"), expect)
    np.testing.assert_array_equal(codecs.quantize(x.astype(np.float32)[:, ::1], "Q4_0"), expect)
    np.testing.assert_array_equal(codecs.quantize(x.tolist(), "Q4_0"), expect)


def test_leading_axes_are_kept() -> None:
    x = np.random.default_rng(2).standard_normal((2, 3, 256)).astype(np.float32)
    q = codecs.quantize(x, "Q6_K")
    assert q.shape == (2, 3, 210)
    np.testing.assert_array_equal(q.reshape(6, 210), codecs.quantize(x.reshape(6, 256), "Q6_K"))
    assert codecs.dequantize(q, "Q6_K", x.shape).shape == x.shape


def test_dequantize_accepts_bytes() -> None:
    x = np.random.default_rng(2).standard_normal((2, 32)).astype(np.float32)
    q = codecs.quantize(x, "Q5_1")
    np.testing.assert_array_equal(codecs.dequantize(q.tobytes(), "Q5_1", (2, 32)), codecs.dequantize(q, "Q5_1", (2, 32)))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_row_and_column(bad: float) -> None:
    x = np.zeros((4, 64), np.float32)
    x[2, 37] = bad
    with pytest.raises(NonFiniteWeightError, match=r"row 2, column 37"):
        codecs.quantize(x, "Q8_0")
    x2 = np.zeros((3, 256), np.float32)
    x2[1, 200] = bad
    with pytest.raises(NonFiniteWeightError, match=r"row 1, column 200"):
        codecs.quantize(x2, "Q6_K")


def test_wrong_row_length() -> None:
    with pytest.raises(RowLengthError, match="576"):
        codecs.quantize(np.zeros((2, 576), np.float32), "Q4_K")
    with pytest.raises(RowLengthError):
        codecs.dequantize(np.zeros(36, np.uint8), "Q8_0", (2, 33))
    with pytest.raises(RowLengthError):
        codecs.row_bytes("Q6_K", 100)


def test_wrong_byte_length() -> None:
    with pytest.raises(ByteLengthError, match="68"):
        codecs.dequantize(np.zeros(67, np.uint8), "Q8_0", (2, 32))
    with pytest.raises(ByteLengthError):
        codecs.dequantize(np.zeros(2 * 144 + 1, np.uint8), "Q4_K", (2, 256))


def test_bad_importance() -> None:
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ImportanceError, match="expected one per column"):
        codecs.quantize(x, "Q4_0", np.ones(32, np.float32))
    bad = np.ones(64, np.float32)
    bad[5] = -1.0
    with pytest.raises(ImportanceError, match="column 5"):
        codecs.quantize(x, "Q4_0", bad)
    bad[5] = np.nan
    with pytest.raises(ImportanceError):
        codecs.quantize(x, "Q4_0", bad)
    with pytest.raises(ImportanceError):
        codecs.quantize(x, "Q4_0", np.ones((2, 64), np.float32))


def test_unknown_type_lists_allowed_names() -> None:
    with pytest.raises(UnknownTypeError, match="Q4_K") as err:
        codecs.quantize(np.zeros((1, 32), np.float32), "Q4_KM")
    assert isinstance(err.value, CodecError)
    with pytest.raises(UnknownTypeError):
        codecs.dequantize(np.zeros(18, np.uint8), "q4_0", (1, 32))


def test_binding_raises_named_errors_directly() -> None:
    from aqrecipe import _packer

    with pytest.raises(UnknownTypeError) as err:
        _packer.quantize(np.zeros((1, 32), np.float32), "NOPE")
    assert err.value.hint and "Q8_0" in err.value.hint
    with pytest.raises(ShapeMismatchError):
        codecs.quantize(np.float32(1.0), "Q8_0")


def test_errors_carry_codes_and_hints() -> None:
    with pytest.raises(NonFiniteWeightError) as err:
        codecs.quantize(np.full((1, 32), np.nan, np.float32), "Q4_0")
    assert err.value.code == "AQ1006" and err.value.hint


# --------------------------------------------------------------------------- determinism


def test_same_bytes_twice() -> None:
    x = np.random.default_rng(6).standard_normal((64, 512)).astype(np.float32)
    imp = np.random.default_rng(7).uniform(0, 3, 512).astype(np.float32)
    for name in ALL_TYPES:
        assert np.array_equal(codecs.quantize(x, name, imp), codecs.quantize(x, name, imp)), name


def test_bytes_do_not_depend_on_thread_count(tmp_path) -> None:
    script = (
        "import sys, numpy as np\n"
        "from aqrecipe.quant import codecs\n"
        "x = np.random.default_rng(6).standard_normal((48, 512)).astype(np.float32)\n"
        "imp = np.random.default_rng(7).uniform(0, 3, 512).astype(np.float32)\n"
        f"names = {ALL_TYPES!r}\n"
        "out = b''.join(codecs.quantize(x, n, imp).tobytes() + codecs.quantize(x, n).tobytes() for n in names)\n"
        "open(sys.argv[1], 'wb').write(out)\n"
    )
    results = []
    for threads in ("1", "3"):
        dest = tmp_path / f"t{threads}.bin"
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        subprocess.run([sys.executable, "-c", script, str(dest)], check=True, env=env)
        results.append(dest.read_bytes())
    assert results[0] == results[1]


def test_import_aqrecipe_does_not_import_torch() -> None:
    code = "import sys, aqrecipe, aqrecipe.quant.codecs, aqrecipe._packer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
