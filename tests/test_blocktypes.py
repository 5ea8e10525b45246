"""The block layout table: Python's is Rust's, both == the gguf package; llama.cpp's fallbacks."""

from __future__ import annotations

import gguf
import pytest

from aqrecipe import _packer
from aqrecipe.quant.blocktypes import _FALLBACK, LAYOUTS, NEEDS_IMATRIX, TYPE_NAMES, fallback_for, fits, layout
from aqrecipe.errors import UnknownTypeError


def test_python_table_equals_rust_table() -> None:
    """LAYOUTS is built from the Rust table: same types, same order, bytes = the sum of the fields."""
    rust = {d["name"]: d for d in _packer.layouts()}
    assert list(rust) == list(LAYOUTS) == list(TYPE_NAMES)
    for name, lay in LAYOUTS.items():
        r = rust[name]
        assert r["ggml_type_id"] == lay.ggml_type_id, name
        assert r["block_weights"] == lay.block_weights, name
        assert r["block_bytes"] == lay.block_bytes, name
        assert tuple(tuple(f) for f in r["fields"]) == lay.fields, name


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_table_matches_gguf(name: str) -> None:
    qtype = gguf.GGMLQuantizationType[name]
    lay = LAYOUTS[name]
    assert int(qtype) == lay.ggml_type_id
    assert gguf.GGML_QUANT_SIZES[qtype] == (lay.block_weights, lay.block_bytes)


@pytest.mark.parametrize("name", TYPE_NAMES)
def test_row_bytes_agree(name: str) -> None:
    lay = layout(name)
    row_len = lay.block_weights * 6
    assert _packer.row_bytes(name, row_len) == lay.row_bytes(row_len) == 6 * lay.block_bytes


@pytest.mark.parametrize(
    ("name", "row_len", "expected"),
    [
        ("Q4_K", 576, "Q5_0"),
        ("Q5_K", 576, "Q5_1"),
        ("Q6_K", 576, "Q8_0"),
        ("Q2_K", 576, "Q4_0"),  # llama-quant.cpp's tensor_type_fallback (llama-cpp-python 0.3.36)
        ("Q3_K", 576, "Q4_0"),
        ("IQ1_S", 576, "IQ4_NL"),
        ("IQ1_M", 576, "IQ4_NL"),
        ("IQ2_XXS", 576, "IQ4_NL"),
        ("TQ1_0", 576, "Q4_0"),
        ("TQ2_0", 576, "Q4_0"),
        ("Q4_K", 1536, "Q4_K"),  # fits: unchanged
        ("Q8_0", 576, "Q8_0"),
        ("Q4_K", 100, "F16"),  # nothing block-based fits: F16 is the last resort
        ("IQ1_S", 48, "F16"),
        ("F32", 7, "F32"),
    ],
)
def test_fallback_rules(name: str, row_len: int, expected: str) -> None:
    assert fallback_for(name, row_len) == expected
    assert fits(expected, row_len)


def test_unknown_type_lists_the_allowed_names() -> None:
    with pytest.raises(UnknownTypeError) as err:
        layout("Q9_Z")
    assert "Q4_K" in str(err.value) and "IQ4_NL" in str(err.value)


def test_needs_imatrix_are_known_types() -> None:
    assert NEEDS_IMATRIX <= set(TYPE_NAMES)


def test_fallbacks_name_known_types() -> None:
    assert set(_FALLBACK) | set(_FALLBACK.values()) <= set(TYPE_NAMES)
