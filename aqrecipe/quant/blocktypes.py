"""Block layouts of the GGUF types aqrecipe writes, llama.cpp's fallbacks and file types.

The layout table has one home, the Rust core (``rust/codecs/src/layout.rs``): the
codecs read their sizes from it and :data:`LAYOUTS` is built from it here through
``aqrecipe._packer.layouts()``. Only llama.cpp's policy (which types need an
imatrix, the fallbacks, the file-type labels) is stated in this module; a test
checks the table against the ``gguf`` package and the recipe schema against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf

from aqrecipe import _packer
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


def _from_rust(entry: dict[str, Any]) -> BlockLayout:
    fields = tuple((str(name), int(size)) for name, size in entry["fields"])
    return BlockLayout(str(entry["name"]), int(entry["ggml_type_id"]), int(entry["block_weights"]), fields)


#: Every block type by GGML name, in the Rust table's order (the schema's order too).
LAYOUTS: dict[str, BlockLayout] = {lay.name: lay for lay in map(_from_rust, _packer.layouts())}

TYPE_NAMES: tuple[str, ...] = tuple(LAYOUTS)

#: The unquantized types: a tensor of one of these is stored as floats, and a file of one gets no
#: per-tensor mixture (llama.cpp picks per-tensor types only for quantized file types).
FLOAT_TYPES: frozenset[str] = frozenset({"F32", "F16", "BF16"})

#: Types that need an importance matrix in llama.cpp (it refuses them without one).
NEEDS_IMATRIX: frozenset[str] = frozenset({"IQ2_XXS", "IQ1_S", "IQ1_M"})

#: llama.cpp's replacement when a row length is not a multiple of the block size.
_FALLBACK: dict[str, str] = {
    "IQ2_XXS": "IQ4_NL",
    "IQ1_S": "IQ4_NL",
    "IQ1_M": "IQ4_NL",
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
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

#: llama.cpp file types that are mixtures with no block type of their own name.
_MIXTURE_ONLY_FILE_TYPES = ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M")

#: The ``LLAMA_FTYPE_*`` of a file made of one block type, where it is not ``MOSTLY_<type>``.
#: A file mostly of Q3_K/Q4_K/Q5_K is the _M mixture: llama_model_loader's label for it
#: when general.file_type is absent (the only file type llama.cpp itself gives such a file).
_UNIFORM_FILE_TYPE = {"F32": "ALL_F32", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M"}

#: ``general.file_type`` (llama.h's ``LLAMA_FTYPE_*``) by llama.cpp file-type name, plus the
#: block types that name no file type. The one table: the plan compiler labels plans with it
#: and the GGUF writer guesses with it. Built from :data:`TYPE_NAMES` (a block type the
#: ``gguf`` package has no file type for fails here, at import).
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    name: _FT[_UNIFORM_FILE_TYPE.get(name, f"MOSTLY_{name}")] for name in TYPE_NAMES
} | {name: _FT[f"MOSTLY_{name}"] for name in _MIXTURE_ONLY_FILE_TYPES}


def file_type_for(name: str) -> gguf.LlamaFileType:
    """``general.file_type`` of a llama.cpp file type (``"Q4_K_M"``) or of a file made of one block type."""
    try:
        return FILE_TYPES[name]
    except KeyError:
        raise UnknownTypeError(
            f"no llama.cpp file type for {name!r}",
            hint=f"use one of: {', '.join(FILE_TYPES)}",
        ) from None
