"""Extreme shapes and buffers never reach Python as a Rust panic (issue 13.4).

``dequantize(b"", "Q8_0", (2**62, 4, 32))`` used to raise ``pyo3_runtime.PanicException``
(a BaseException): the shape's product wrapped to 0 mod 2**64 and an ``.expect`` outside
the panic guard fired. Every call below either returns an array of the right shape or
raises an :class:`aqrecipe.errors.AqrecipeError`; the public face's error class is
predicted exactly by a model computed with Python's unbounded ints.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aqrecipe import _packer, codecs
from aqrecipe.quant.blocktypes import TYPE_NAMES, layout
from aqrecipe.errors import (
    AqrecipeError,
    ByteLengthError,
    CodecError,
    ImportanceError,
    RowLengthError,
    ShapeMismatchError,
)

MAX = sys.maxsize  # 2**63 - 1: the most elements or bytes any array can have
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXTREME = st.one_of(
    st.sampled_from([0, 1, 2, 32, 256, 2**31, 2**32, 2**61, 2**62, MAX, MAX + 1, 2**64 - 1, 2**64, 2**70,
                     -1, -32, -(2**63), -(2**64)]),
    st.integers(0, 600),
    st.integers(0, 8).map(lambda k: 256 * k),
    st.integers(-(2**70), 2**70),
)
SHAPES = st.lists(EXTREME, min_size=0, max_size=5)
TYPES = st.sampled_from(TYPE_NAMES)


def outcome(call):
    """The call's result, or the AqrecipeError it raised; anything else fails the test."""
    try:
        return call()
    except AqrecipeError as exc:
        assert isinstance(exc, Exception) and isinstance(exc, CodecError), repr(exc)
        return exc
    except BaseException as exc:  # PanicException is a BaseException: catch it to name it
        pytest.fail(f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc}")


def nonzero_product(shape) -> int:
    return math.prod(d for d in shape if d)


def decode_model(type_name: str, shape: list[int], n_bytes: int):
    """What codecs.dequantize must do: the error class, or the result's shape."""
    lay = layout(type_name)
    if not shape or any(not 0 <= d <= MAX for d in shape):
        return ShapeMismatchError
    row_len = shape[-1]
    if row_len == 0 or row_len % lay.block_weights:
        return RowLengthError
    rb = lay.row_bytes(row_len)
    if rb > MAX or nonzero_product(shape) * 4 > MAX:  # a float32 result numpy could hold
        return ShapeMismatchError
    count = math.prod(shape)
    if count // row_len * rb != n_bytes:
        return ByteLengthError
    return tuple(shape)


def check(got, expected, dtype) -> None:
    if isinstance(expected, type):
        assert isinstance(got, expected), f"expected {expected.__name__}, got {got!r}"
    else:
        assert isinstance(got, np.ndarray), f"expected an array of shape {expected}, got {got!r}"
        assert got.shape == expected and got.dtype == dtype


# --------------------------------------------------------------------------- the issue's case


def test_the_issue_case_is_a_named_error_not_a_panic() -> None:
    for call in (lambda: codecs.dequantize(b"", "Q8_0", (2**62, 4, 32)),
                 lambda: _packer.dequantize(np.zeros(0, np.uint8), "Q8_0", [2**62, 4, 32])):
        err = outcome(call)
        assert isinstance(err, ShapeMismatchError), repr(err)
        assert "4611686018427387904" in err.message and err.hint  # what is wrong, and how to fix it


def test_sizes_that_wrap_are_refused_not_taken_for_small_ones() -> None:
    # 2**62 F32 weights need 2**64 bytes: the row size used to wrap to 0.
    assert isinstance(outcome(lambda: codecs.row_bytes("F32", 2**62)), ShapeMismatchError)
    assert isinstance(outcome(lambda: _packer.row_bytes("F32", 2**62)), ShapeMismatchError)
    # An empty uint8 x whose float32 copy numpy cannot hold.
    assert isinstance(outcome(lambda: codecs.quantize(np.empty((0, 2**62), np.uint8), "F32")), ShapeMismatchError)
    # An empty result with a huge axis numpy cannot hold; an honest empty one decodes.
    assert isinstance(outcome(lambda: codecs.dequantize(b"", "Q8_0", (0, 2**62))), ShapeMismatchError)
    assert codecs.dequantize(b"", "Q8_0", (0, 2**40, 32)).shape == (0, 2**40, 32)


@pytest.mark.parametrize("shape", [(-1, 32), (2, -32), (2**64, 32), (2, 2**64), (2.0, 32), "32", None, ()])
def test_shapes_that_are_not_shapes(shape) -> None:
    err = outcome(lambda: codecs.dequantize(np.zeros(68, np.uint8), "Q8_0", shape))
    assert isinstance(err, ShapeMismatchError) and err.hint, repr(err)


@pytest.mark.parametrize("row_len", [-1, -(2**63), 2**64, 2**70, 32.0, "32"])
def test_row_lengths_that_are_not_lengths(row_len) -> None:
    assert isinstance(outcome(lambda: codecs.row_bytes("Q8_0", row_len)), RowLengthError)


def test_the_binding_names_wrong_arguments_too() -> None:
    assert isinstance(outcome(lambda: _packer.row_bytes("Q8_0", -1)), RowLengthError)
    assert isinstance(outcome(lambda: _packer.dequantize(np.zeros(34, np.uint8), "Q8_0", [-1, 32])),
                      ShapeMismatchError)
    assert isinstance(outcome(lambda: _packer.dequantize(b"x" * 34, "Q8_0", [1, 32])), ShapeMismatchError)
    assert isinstance(outcome(lambda: _packer.quantize(np.zeros((1, 32)), "Q8_0")), ShapeMismatchError)  # float64
    assert isinstance(outcome(lambda: _packer.quantize(np.zeros((2, 64), np.float32)[:, ::2], "Q8_0")),
                      ShapeMismatchError)
    assert isinstance(outcome(lambda: _packer.quantize(np.zeros((1, 32), np.float32), 8)), CodecError)
    assert len(outcome(_packer.layouts)) == len(TYPE_NAMES)


# --------------------------------------------------------------------------- properties


@st.composite
def decode_cases(draw):
    type_name = draw(TYPES)
    shape = draw(SHAPES)
    lay = layout(type_name)
    exact = None
    if shape and all(0 <= d <= MAX for d in shape) and shape[-1] and shape[-1] % lay.block_weights == 0:
        need = math.prod(shape) // shape[-1] * lay.row_bytes(shape[-1])
        exact = need if need <= 4096 else None
    lengths = st.integers(0, 300) if exact is None else st.one_of(st.just(exact), st.integers(0, 300))
    return type_name, shape, draw(lengths), draw(st.sampled_from(["bytes", "uint8", "float32"]))


@SETTINGS
@given(decode_cases())
def test_dequantize_returns_the_shape_or_a_named_error(case) -> None:
    type_name, shape, n_bytes, kind = case
    raw = bytes(range(256)) * (n_bytes // 256 + 1)
    if kind == "float32":  # any array's bytes count; keep whole float32 items
        n_bytes -= n_bytes % 4
        data = np.frombuffer(raw[:n_bytes], np.float32)
    else:
        data = raw[:n_bytes] if kind == "bytes" else np.frombuffer(raw[:n_bytes], np.uint8)
    got = outcome(lambda: codecs.dequantize(data, type_name, shape))
    check(got, decode_model(type_name, shape, n_bytes), np.float32)
    # The binding itself, handed any integers at all, names its errors as well.
    direct = outcome(lambda: _packer.dequantize(np.frombuffer(raw[:n_bytes], np.uint8), type_name, shape))
    if isinstance(got, np.ndarray):
        assert isinstance(direct, np.ndarray) and direct.tobytes() == got.tobytes()


@st.composite
def encode_cases(draw):
    """An array numpy can make: small when it holds values, any axes when one is 0."""
    shape = draw(st.lists(st.one_of(EXTREME.filter(lambda d: 0 <= d <= MAX), st.integers(0, 40)),
                          min_size=1, max_size=4))
    if math.prod(shape) > 1024:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    dtype = draw(st.sampled_from([np.float32, np.uint8, np.float64]))
    importance = draw(st.one_of(st.none(), st.just("row"), st.integers(0, 600)))
    return draw(TYPES), shape, dtype, importance


@SETTINGS
@given(encode_cases())
def test_quantize_returns_the_shape_or_a_named_error(case) -> None:
    type_name, shape, dtype, importance = case
    try:
        x = np.ones(shape, dtype) if math.prod(shape) else np.empty(shape, dtype)
    except ValueError:  # numpy itself cannot hold this shape: no x to quantize
        return
    lay = layout(type_name)
    *lead, row_len = shape
    imp = None
    if importance is not None:
        imp = np.ones(row_len if importance == "row" else importance, np.float32) if row_len <= 4096 else None
    got = outcome(lambda: codecs.quantize(x, type_name, imp))
    if nonzero_product(shape) * 4 > MAX:  # the float32 copy of an empty x numpy cannot hold
        expected = ShapeMismatchError
    elif row_len == 0 or row_len % lay.block_weights:
        expected = RowLengthError
    elif imp is not None and imp.size != row_len:
        expected = ImportanceError
    else:  # every size fits: a row's bytes are at most 4 per weight, as in x's float32 copy
        expected = (*lead, lay.row_bytes(row_len))
    check(got, expected, np.uint8)


@SETTINGS
@given(TYPES, EXTREME)
def test_row_bytes_is_exact_or_a_named_error(type_name, row_len) -> None:
    lay = layout(type_name)
    got = outcome(lambda: codecs.row_bytes(type_name, row_len))
    if not 0 < row_len <= MAX or row_len % lay.block_weights:
        assert isinstance(got, RowLengthError), repr(got)
    elif lay.row_bytes(row_len) > MAX:
        assert isinstance(got, ShapeMismatchError), repr(got)
    else:
        assert got == lay.row_bytes(row_len)
    direct = outcome(lambda: _packer.row_bytes(type_name, row_len))
    assert direct == got if isinstance(got, int) else isinstance(direct, CodecError), repr(direct)


@pytest.mark.parametrize("shape", [(4, 0), (4, 33), (0,), ()])
def test_pack_entry_refuses_a_plan_shape_the_weights_do_not_fit(shape) -> None:
    from aqrecipe.output.pack import pack_entry
    from aqrecipe.plan import PlanEntry

    class OneTensor:
        def read_for_gguf(self, name: str) -> np.ndarray:
            return np.zeros((4, 64), np.float32)

    entry = PlanEntry("blk.0.ffn_down.weight", "x", shape, "F32", "Q8_0", "Q8_0", "test", 256, 272)
    err = outcome(lambda: pack_entry(OneTensor(), entry))
    assert isinstance(err, ShapeMismatchError) and "blk.0.ffn_down.weight" in err.message, repr(err)
