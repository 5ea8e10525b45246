"""Huge but finite importance cannot overflow a codec's search (issue 16, class 4).

An imatrix with values near 1e35 used to pass every check and wreck IQ4_NL and Q6_K
tensors (relative error 0.84 instead of 0.07, exit 0). The codecs' entry point scales
such a vector down by a power of two, which leaves every ratio, and so every byte, as
for the unscaled vector.
"""

from __future__ import annotations

import numpy as np
import pytest

from aqrecipe.quant.codecs import IMPORTANCE_CEILING, bounded_importance, dequantize, quantize

IMPORTANCE_TYPES = ["IQ4_NL", "Q6_K", "Q4_K", "Q5_K", "Q3_K", "Q2_K", "IQ2_XXS", "IQ1_S", "IQ1_M", "Q4_0", "Q5_1"]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((16, 512)).astype(np.float32)
    weights[3, 17] = 40.0  # an outlier, as real rows have
    importance = rng.lognormal(0.0, 2.0, 512).astype(np.float32)  # mean squares spread over decades
    return weights, importance


def _error(w: np.ndarray, packed: np.ndarray, type_name: str) -> float:
    return float(np.linalg.norm(dequantize(packed, type_name, w.shape) - w) / np.linalg.norm(w))


@pytest.mark.parametrize("type_name", IMPORTANCE_TYPES)
@pytest.mark.parametrize("exponent", [80, 100, 116])  # x 1.2e24, 1.3e30, 8.3e34 (about 1e35): max near 3e38
def test_huge_importance_gives_the_bytes_of_the_unscaled_one(type_name: str, exponent: int) -> None:
    w, imp = _data()
    scaled = (imp.astype(np.float64) * 2.0**exponent).astype(np.float32)
    assert np.isfinite(scaled).all()
    assert np.array_equal(quantize(w, type_name, scaled), quantize(w, type_name, imp))


@pytest.mark.parametrize("type_name", ["IQ4_NL", "Q6_K"])
def test_importance_times_1e35_keeps_the_error_of_the_unscaled_one(type_name: str) -> None:
    # 1e35 is not a power of two: float32 rounding moves the ratios by 1e-7, codes may differ in ties
    w, imp = _data(1)
    base = _error(w, quantize(w, type_name, imp), type_name)
    huge = _error(w, quantize(w, type_name, imp * np.float32(1e35)), type_name)
    assert huge <= base * 1.01 + 1e-6, (base, huge)
    assert base < 0.1


def test_real_importance_is_passed_through_untouched() -> None:
    _, imp = _data()
    imp = imp * np.float32(1e9 / imp.max())  # a large real imatrix: massive activations and a x100 boost
    assert bounded_importance(imp) is imp


def test_scaled_vector_is_below_the_ceiling_and_keeps_its_ratios() -> None:
    imp = np.array([3.0e38, 1.5e38, 7.0, 0.0], np.float32)
    out = bounded_importance(imp)
    assert out.dtype == np.float32 and out.max() <= IMPORTANCE_CEILING
    assert out[0] / out[1] == imp[0] / imp[1] and out[3] == 0.0


@pytest.mark.parametrize("bad", [np.inf, np.nan, -1.0])
def test_invalid_importance_is_still_refused_by_the_codec(bad: float) -> None:
    from aqrecipe.errors import ImportanceError

    w, imp = _data()
    imp[5] = bad
    imp[6] = 1e35
    with pytest.raises(ImportanceError):
        quantize(w, "Q6_K", imp)
