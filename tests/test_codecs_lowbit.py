"""Ultra-low-bit codecs (Q2_K, Q3_K, IQ2_XXS, IQ1_S, IQ1_M, TQ1_0, TQ2_0) against the gguf oracle."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as G
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from aqrecipe.quant import codecs

TYPES = ["Q3_K", "Q2_K", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0"]
BPW = {"IQ1_S": 1.5625, "IQ1_M": 1.75, "TQ1_0": 1.6875, "TQ2_0": 2.0625,
       "Q2_K": 2.625, "Q3_K": 3.4375, "IQ2_XXS": 2.0625}
# relative RMSE on N(0, 1) data, measured 0.146 / 0.272 / 0.334 / 0.424 / 0.457 / 0.80 / 0.80
RMSE_BOUND = {"Q3_K": 0.17, "Q2_K": 0.30, "IQ2_XXS": 0.36, "IQ1_M": 0.46, "IQ1_S": 0.50,
              "TQ2_0": 0.85, "TQ1_0": 0.85}


def _gaussian(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def _structured(cols: int) -> np.ndarray:
    """Rows that stress scale search: ramps, sparse spikes, constant, heavy tails, tiny values."""
    i = np.arange(cols, dtype=np.float32)
    rng = np.random.default_rng(7)
    rows = [
        np.linspace(-1, 1, cols, dtype=np.float32),
        np.where(i % 37 == 0, 5.0, 0.0).astype(np.float32),
        np.full(cols, -0.75, np.float32),
        rng.standard_t(2, cols).astype(np.float32),
        (rng.standard_normal(cols) * 1e-6).astype(np.float32),
        np.sin(i / 3).astype(np.float32) * 300,
        np.zeros(cols, np.float32),
        np.abs(rng.standard_normal(cols)).astype(np.float32),
    ]
    return np.stack(rows)


def _oracle(data: np.ndarray, type_name: str, shape: tuple[int, int]) -> np.ndarray:
    return gguf_dequantize(data, G[type_name]).reshape(shape)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("cols", [256, 1536])
def test_decode_matches_gguf_on_encoded_data(type_name: str, cols: int) -> None:
    for x in (_gaussian(6, cols, seed=cols), _structured(cols)):
        data = codecs.quantize(x, type_name)
        ours = codecs.dequantize(data, type_name, x.shape)
        np.testing.assert_array_equal(ours, _oracle(data, type_name, x.shape))
        assert np.isfinite(ours).all()


@pytest.mark.parametrize("type_name", TYPES)
def test_decode_matches_gguf_on_random_bytes(type_name: str) -> None:
    """Every byte pattern decodes like the reference (scales forced finite, small)."""
    rows, cols = 4, 512
    rb = codecs.row_bytes(type_name, cols)
    raw = np.random.default_rng(11).integers(0, 256, (rows, rb), dtype=np.uint8)
    block = {"Q2_K": 84, "Q3_K": 110, "IQ2_XXS": 66, "IQ1_S": 50, "IQ1_M": 56, "TQ1_0": 54, "TQ2_0": 66}[type_name]
    blocks = raw.reshape(-1, block)
    # clear the f16 exponent's top bits so no scale is inf/nan (IQ1_M keeps d in the top nibbles)
    f16_offsets = {"Q2_K": [80, 82], "Q3_K": [108], "IQ2_XXS": [0], "IQ1_S": [0], "TQ1_0": [52], "TQ2_0": [64]}
    if type_name == "IQ1_M":
        blocks[:, 55] &= 0x3F
    for off in f16_offsets.get(type_name, []):
        blocks[:, off + 1] &= 0x3F
    data = blocks.reshape(rows, rb)
    ours = codecs.dequantize(data, type_name, (rows, cols))
    np.testing.assert_array_equal(ours, _oracle(data, type_name, (rows, cols)))


@pytest.mark.parametrize("type_name", ["TQ1_0", "TQ2_0"])
@pytest.mark.parametrize("cols", [256, 1536])
def test_ternary_bytes_equal_gguf_quantize(type_name: str, cols: int) -> None:
    big = _gaussian(2, cols, seed=4)
    big = (big / np.abs(big).max() * 60000).astype(np.float32)  # near the f16 limit, still finite
    for x in (_gaussian(5, cols, seed=3), _structured(cols), big):
        np.testing.assert_array_equal(codecs.quantize(x, type_name), gguf_quantize(x, G[type_name]))


@pytest.mark.parametrize("type_name", TYPES)
def test_file_bits_per_weight(type_name: str) -> None:
    x = _gaussian(3, 1536, seed=1)
    data = codecs.quantize(x, type_name)
    assert data.dtype == np.uint8
    assert data.shape == (3, codecs.row_bytes(type_name, 1536))
    assert data.size * 8 / x.size == pytest.approx(BPW[type_name])


def test_relative_rmse_is_sane_and_ordered() -> None:
    x = _gaussian(32, 1536, seed=5)
    errs = {}
    for t in TYPES:
        y = codecs.dequantize(codecs.quantize(x, t), t, x.shape)
        errs[t] = float(np.sqrt(np.mean((y - x) ** 2)) / x.std())
    for t, bound in RMSE_BOUND.items():
        assert errs[t] < bound, errs
    order = ["Q3_K", "Q2_K", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0"]
    assert [errs[t] for t in order] == sorted(errs[t] for t in order), errs


@pytest.mark.parametrize("type_name", TYPES)
def test_importance_lowers_weighted_error(type_name: str) -> None:
    cols = 1024
    x = _gaussian(24, cols, seed=9)
    imp = np.exp(2.0 * np.random.default_rng(10).standard_normal(cols)).astype(np.float32)

    def wmse(y: np.ndarray) -> float:
        return float(np.mean(imp * (y - x) ** 2))

    plain = codecs.dequantize(codecs.quantize(x, type_name), type_name, x.shape)
    weighted = codecs.dequantize(codecs.quantize(x, type_name, importance=imp), type_name, x.shape)
    assert wmse(weighted) < 0.9 * wmse(plain)


@pytest.mark.parametrize("type_name", ["TQ1_0", "TQ2_0"])
def test_ternary_absmean(type_name: str) -> None:
    x = _gaussian(4, 512, seed=12)
    y = codecs.dequantize(codecs.quantize(x, type_name, ternary_absmean=True), type_name, x.shape)
    blocks_x, blocks_y = x.reshape(-1, 256), y.reshape(-1, 256)
    d = np.abs(blocks_x).mean(axis=1, keepdims=True).astype(np.float16).astype(np.float32)
    expected = np.clip(np.round(blocks_x / d), -1, 1) * d
    np.testing.assert_allclose(blocks_y, expected, rtol=0, atol=1e-6)
    # absmean keeps more nonzero codes than absmax, and fits Gaussian data better
    absmax = codecs.dequantize(codecs.quantize(x, type_name), type_name, x.shape)
    assert np.mean(y != 0) > np.mean(absmax != 0)
    assert np.mean((y - x) ** 2) < np.mean((absmax - x) ** 2)


def test_encoding_is_deterministic() -> None:
    x = _gaussian(16, 512, seed=13)
    imp = np.random.default_rng(14).random(512).astype(np.float32)
    for t in TYPES:
        a = codecs.quantize(x, t, importance=imp)
        b = codecs.quantize(x.copy(), t, importance=imp.copy())
        np.testing.assert_array_equal(a, b)


_SCALES = st.sampled_from([1.0, 1e-3, 1e-30, 1e-40, 6e4, 1e30])


@settings(max_examples=25, deadline=None)
@given(
    type_name=st.sampled_from(TYPES),
    seed=st.integers(0, 2**32 - 1),
    scale=_SCALES,
    kind=st.sampled_from(["gauss", "const", "outlier", "sparse"]),
    with_imp=st.booleans(),
)
def test_property_no_crash_and_bounded(type_name: str, seed: int, scale: float, kind: str, with_imp: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    if kind == "const":
        x[:] = np.float32(scale)
    elif kind == "outlier":
        x = (x * np.float32(scale / 1000)).astype(np.float32)
        x[:, rng.integers(0, 512)] = np.float32(scale)
    elif kind == "sparse":
        x = np.where(rng.random(x.shape) < 0.05, x * np.float32(scale), np.float32(0)).astype(np.float32)
    else:
        x = (x * np.float32(scale)).astype(np.float32)
    imp = rng.random(512).astype(np.float32) if with_imp else None
    y = codecs.dequantize(codecs.quantize(x, type_name, importance=imp), type_name, x.shape)
    assert np.isfinite(y).all()
    amax = np.abs(x.reshape(-1, 256)).max(axis=1, keepdims=True)
    err = np.abs(y - x).reshape(-1, 256)
    # bound: |x - x̂| <= 2.5 * block max |x| while scales fit f16 (no clamping)
    ok = (amax <= 1e4) & (amax >= 1e-30)
    assert (err <= 2.5 * amax + 0)[ok[:, 0]].all()
