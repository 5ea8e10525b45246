"""Block layouts of the GGUF types aqrecipe writes, llama.cpp's fallbacks and file types.

The same layout table lives in the Rust core (``rust/codecs/src/layout.rs``); a
test checks that the two agree with each other and with the ``gguf`` package.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from aqrecipe.errors import UnknownTypeError


@dataclass(frozen=True)
class BlockLayout:
    """Weights per block and the block's bytes as named fields."""

    name: str
    ggml_type_id: int
    block_weights: int
    fields: tuple[tuple[str, int], ...]

    @property
    def block_bytes(self) -> int:
        return sum(size for _, size in self.fields)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_weights

    def row_bytes(self, row_len: int) -> int:
        """Bytes of one row; ``row_len`` must be a multiple of the block size."""
        return row_len // self.block_weights * self.block_bytes


def _layout(name: str, type_id: int, weights: int, *fields: tuple[str, int]) -> BlockLayout:
    return BlockLayout(name, type_id, weights, tuple(fields))


LAYOUTS: dict[str, BlockLayout] = {
    layout.name: layout
    for layout in (
        _layout("F32", 0, 1, ("value", 4)),
        _layout("F16", 1, 1, ("value", 2)),
        _layout("BF16", 30, 1, ("value", 2)),
        _layout("Q8_0", 8, 32, ("d", 2), ("qs", 32)),
        _layout("Q4_0", 2, 32, ("d", 2), ("qs", 16)),
        _layout("Q4_1", 3, 32, ("d", 2), ("m", 2), ("qs", 16)),
        _layout("Q5_0", 6, 32, ("d", 2), ("qh", 4), ("qs", 16)),
        _layout("Q5_1", 7, 32, ("d", 2), ("m", 2), ("qh", 4), ("qs", 16)),
        _layout("Q2_K", 10, 256, ("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)),
        _layout("Q3_K", 11, 256, ("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)),
        _layout("Q4_K", 12, 256, ("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)),
        _layout("Q5_K", 13, 256, ("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)),
        _layout("Q6_K", 14, 256, ("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)),
        _layout("IQ4_NL", 20, 32, ("d", 2), ("qs", 16)),
        _layout("IQ2_XXS", 16, 256, ("d", 2), ("qs", 64)),
        _layout("IQ1_S", 19, 256, ("d", 2), ("qs", 32), ("qh", 16)),
        _layout("IQ1_M", 29, 256, ("qs", 32), ("qh", 16), ("scales", 8)),
        _layout("TQ1_0", 34, 256, ("qs", 48), ("qh", 4), ("d", 2)),
        _layout("TQ2_0", 35, 256, ("qs", 64), ("d", 2)),
    )
}

TYPE_NAMES: tuple[str, ...] = tuple(LAYOUTS)

#: Types that need an importance matrix in llama.cpp (it refuses them without one).
NEEDS_IMATRIX: frozenset[str] = frozenset({"IQ2_XXS", "IQ1_S", "IQ1_M"})

#: llama.cpp's replacement when a row length is not a multiple of the block size.
_FALLBACK: dict[str, str] = {
    "IQ2_XXS": "IQ4_NL",
    "IQ1_S": "IQ4_NL",
    "IQ1_M": "IQ4_NL",
    "Q2_K": "IQ4_NL",
    "Q3_K": "IQ4_NL",
    "TQ1_0": "Q4_0",
    "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}


def layout(name: str) -> BlockLayout:
    """The layout of a type by its GGML name (``"Q4_K"``)."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise UnknownTypeError(
            f"unknown quantization type {name!r}",
            hint=f"use one of: {', '.join(TYPE_NAMES)}",
        ) from None


def fits(name: str, row_len: int) -> bool:
    """Whether rows of ``row_len`` weights split into whole blocks of ``name``."""
    return row_len > 0 and row_len % layout(name).block_weights == 0


def fallback_for(name: str, row_len: int) -> str:
    """The type llama.cpp uses when rows of ``row_len`` do not fit ``name``.

    Returns ``name`` itself when the rows fit. Follows the chain until a type
    fits; F16 is the last resort.
    """
    current = name
    while not fits(current, row_len):
        current = _FALLBACK.get(current, "F16")
    return current


_FT = gguf.LlamaFileType

#: ``general.file_type`` (llama.h's ``LLAMA_FTYPE_*``) by llama.cpp file-type name, plus the
#: block types that name no file type. The one table: the plan compiler labels plans with it
#: and the GGUF writer guesses with it.
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "F32": _FT.ALL_F32,
    "F16": _FT.MOSTLY_F16,
    "BF16": _FT.MOSTLY_BF16,
    "Q8_0": _FT.MOSTLY_Q8_0,
    "Q4_0": _FT.MOSTLY_Q4_0,
    "Q4_1": _FT.MOSTLY_Q4_1,
    "Q5_0": _FT.MOSTLY_Q5_0,
    "Q5_1": _FT.MOSTLY_Q5_1,
    "Q2_K": _FT.MOSTLY_Q2_K,
    "Q3_K_M": _FT.MOSTLY_Q3_K_M,
    "Q4_K_S": _FT.MOSTLY_Q4_K_S,
    "Q4_K_M": _FT.MOSTLY_Q4_K_M,
    "Q5_K_S": _FT.MOSTLY_Q5_K_S,
    "Q5_K_M": _FT.MOSTLY_Q5_K_M,
    "Q6_K": _FT.MOSTLY_Q6_K,
    "IQ4_NL": _FT.MOSTLY_IQ4_NL,
    "IQ2_XXS": _FT.MOSTLY_IQ2_XXS,
    "IQ1_S": _FT.MOSTLY_IQ1_S,
    "IQ1_M": _FT.MOSTLY_IQ1_M,
    "TQ1_0": _FT.MOSTLY_TQ1_0,
    "TQ2_0": _FT.MOSTLY_TQ2_0,
    # A file mostly of Q3_K/Q4_K/Q5_K is the _M mixture: llama_model_loader's label for it
    # when general.file_type is absent (the only file type llama.cpp itself gives such a file).
    "Q3_K": _FT.MOSTLY_Q3_K_M,
    "Q4_K": _FT.MOSTLY_Q4_K_M,
    "Q5_K": _FT.MOSTLY_Q5_K_M,
}


def file_type_for(name: str) -> gguf.LlamaFileType:
    """``general.file_type`` of a llama.cpp file type (``"Q4_K_M"``) or of a file made of one block type."""
    try:
        return FILE_TYPES[name]
    except KeyError:
        raise UnknownTypeError(
            f"no llama.cpp file type for {name!r}",
            hint=f"use one of: {', '.join(FILE_TYPES)}",
        ) from None
