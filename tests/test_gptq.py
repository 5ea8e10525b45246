"""GPTQ rounding through the Python face (aqrecipe.quant.rounding): planted problems, a held-out
property against round-to-nearest for every block type, gguf-py decoding the bytes, bad input."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from aqrecipe.errors import GptqOptionError, HessianError, ImportanceError, NonFiniteWeightError
from aqrecipe.quant.codecs import dequantize, quantize
from aqrecipe.quant.rounding import GPTQ_TYPES, quantize_gptq

#: The issue's list (Q4_1 / Q5_1 work the same way and are in GPTQ_TYPES too).
ISSUE_TYPES = ("Q4_K", "Q5_K", "Q6_K", "Q3_K", "Q2_K", "Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "IQ2_XXS", "IQ1_S",
               "IQ1_M", "TQ1_0", "TQ2_0")


def correlated_inputs(rng: np.random.Generator, n: int, tokens: int, rank: int = 12) -> np.ndarray:
    """``[tokens, n]`` activations with strongly correlated features and uneven scales, like a layer's input."""
    basis = rng.standard_normal((rank, n))
    scale = 0.3 + 2.0 * rng.random(n)
    x = rng.standard_normal((tokens, rank)) @ basis + 0.3 * rng.standard_normal((tokens, n))
    return (x * scale).astype(np.float32)


def out_err(w: np.ndarray, wq: np.ndarray, x: np.ndarray) -> float:
    """||(W - Ŵ) Xᵀ||² over the tokens of ``x``."""
    return float(np.sum(((w - wq).astype(np.float64) @ x.T.astype(np.float64)) ** 2))


def test_issue_types_are_covered() -> None:
    assert set(ISSUE_TYPES) <= set(GPTQ_TYPES)


def test_diagonal_hessian_gives_the_bytes_of_round_to_nearest() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 512)).astype(np.float32)
    d = (0.1 + rng.random(512)).astype(np.float32)
    for t in GPTQ_TYPES:
        assert np.array_equal(quantize_gptq(w, t, np.diag(d)), quantize(w, t, d)), t


def test_twin_inputs_move_the_error_to_the_twin_block() -> None:
    # Columns 32..63 see exactly the input of columns 0..31, so only w0 + w1 matters: after block 0
    # is rounded, the best block 1 is the rounding of w1 + (w0 - ŵ0), and GPTQ finds it.
    rng = np.random.default_rng(1)
    z = correlated_inputs(rng, 32, 2048)
    x = np.concatenate([z, z], axis=1)
    h = (x.T.astype(np.float64) @ x / len(x)).astype(np.float32)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    d = np.diag(h).astype(np.float32)
    for t in ("Q4_0", "Q5_0", "Q8_0", "IQ4_NL"):
        got = dequantize(quantize_gptq(w, t, h, damp=1e-7), t, w.shape)
        q0 = dequantize(quantize(w[:, :32], t, d[:32]), t, (8, 32))
        assert np.array_equal(got[:, :32], q0), t
        want = dequantize(quantize(w[:, 32:] + w[:, :32] - q0, t, d[32:]), t, (8, 32))
        # the codes may differ where a scale search sits on a tie; the output error may not
        optimum = np.concatenate([q0, want], axis=1)
        assert out_err(w, got, x) <= 1.02 * out_err(w, optimum, x), t
        rtn = dequantize(quantize(w, t, d), t, w.shape)
        assert out_err(w, got, x) < 0.75 * out_err(w, rtn, x), t


@pytest.mark.parametrize("type_name", ISSUE_TYPES)
@pytest.mark.parametrize("act_order", [False, True])
def test_held_out_output_error_is_not_above_round_to_nearest(type_name: str, act_order: bool) -> None:
    rng = np.random.default_rng(abs(hash((type_name, act_order))) % 2**32)
    n = 512
    x_all = correlated_inputs(rng, n, 8192)
    calib, held_out = x_all[:4096], x_all[4096:]
    h = calib.T @ calib / len(calib)
    imatrix = np.mean(calib.astype(np.float64) ** 2, axis=0).astype(np.float32)
    w = (0.02 * rng.standard_normal((32, n))).astype(np.float32)
    rtn = dequantize(quantize(w, type_name, imatrix), type_name, w.shape)
    gptq = dequantize(quantize_gptq(w, type_name, h, importance=imatrix, act_order=act_order), type_name, w.shape)
    assert out_err(w, gptq, held_out) <= out_err(w, rtn, held_out)


@pytest.mark.parametrize("type_name", ISSUE_TYPES)
def test_gguf_py_decodes_the_bytes_as_we_do(type_name: str) -> None:
    rng = np.random.default_rng(7)
    x = correlated_inputs(rng, 256, 1024)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    packed = quantize_gptq(w, type_name, x.T @ x, act_order=True)
    ours = dequantize(packed, type_name, w.shape)
    theirs = gguf.quants.dequantize(packed, gguf.GGMLQuantizationType[type_name])
    np.testing.assert_array_equal(ours, theirs.reshape(w.shape))


def test_bytes_do_not_depend_on_the_batch_width_much_and_are_deterministic() -> None:
    rng = np.random.default_rng(3)
    x = correlated_inputs(rng, 512, 2048)
    h = x.T @ x
    w = rng.standard_normal((16, 512)).astype(np.float32)
    a = quantize_gptq(w, "Q4_K", h, block_size=1)
    b = quantize_gptq(w, "Q4_K", h, block_size=512)
    assert np.array_equal(quantize_gptq(w, "Q4_K", h, block_size=1), a)
    ea = out_err(w, dequantize(a, "Q4_K", w.shape), x)
    eb = out_err(w, dequantize(b, "Q4_K", w.shape), x)
    assert abs(ea - eb) <= 0.02 * ea


def test_bad_input_is_a_named_error() -> None:
    w = np.ones((2, 32), np.float32)
    eye = np.eye(32, dtype=np.float32)
    with pytest.raises(HessianError, match=r"expected \(32, 32\)"):
        quantize_gptq(w, "Q8_0", np.eye(31))
    bad = eye.copy()
    bad[3, 4] = np.nan
    with pytest.raises(HessianError, match="not a valid"):
        quantize_gptq(w, "Q8_0", bad)
    indefinite = eye.copy()
    indefinite[0, 1] = indefinite[1, 0] = 5.0
    with pytest.raises(HessianError, match="not positive definite") as err:
        quantize_gptq(w, "Q8_0", indefinite, damp=0.0)
    assert "damp" in err.value.hint
    with pytest.raises(GptqOptionError, match="damp"):
        quantize_gptq(w, "Q8_0", eye, damp=-1)
    with pytest.raises(GptqOptionError, match="block_size"):
        quantize_gptq(w, "Q8_0", eye, block_size=0)
    with pytest.raises(GptqOptionError, match="F16"):
        quantize_gptq(w, "F16", eye)
    with pytest.raises(ImportanceError):
        quantize_gptq(w, "Q8_0", eye, importance=np.ones(5))
    nan_w = w.copy()
    nan_w[1, 2] = np.inf
    with pytest.raises(NonFiniteWeightError, match="row 1, column 2"):
        quantize_gptq(nan_w, "Q8_0", eye)
    with pytest.raises(HessianError, match="2-D"):
        quantize_gptq(np.ones((2, 2, 32), np.float32), "Q8_0", eye)
