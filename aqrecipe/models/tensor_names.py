"""Tensor-name facts, in one place: the layer and role a name says, and the q/k rope permutation.

GGUF (llama.cpp) names: ``token_embd.weight``, ``blk.N.ROLE.weight`` (or ``.bias``),
``output_norm.weight``, ``output.weight``. HF names hold their layer as ``.layers.N.``.

The rope rule: llama.cpp's llama graph uses interleaved (GPT-J style) rope, HF the
half-split one, so on an architecture with ``permute_qk`` the rows of every block's
``attn_q`` (over ``n_head`` heads) and ``attn_k`` (over ``n_head_kv`` heads), weights and
biases, are permuted on conversion (:func:`to_gguf_layout`) and back (:func:`to_hf_layout`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from aqrecipe.models.architectures import ArchInfo

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(?:weight|bias)$")
_HF_LAYER = re.compile(r"\.layers\.(\d+)\.")

#: roles of a decoder block's tensors (``blk.N.<role>.weight``) in the supported architectures
BLOCK_ROLES = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
               "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def layer_of(gguf_name: str) -> int | None:
    """The decoder layer of a GGUF name (``blk.3.attn_q.weight`` -> 3); None outside the blocks."""
    m = _BLOCK.match(gguf_name)
    return int(m.group(1)) if m else None


def hf_layer_of(hf_name: str) -> int | None:
    """The decoder layer of an HF name (``model.layers.3.self_attn.q_proj.weight`` -> 3), or None."""
    m = _HF_LAYER.search(hf_name)
    return int(m.group(1)) if m else None


def role_of(gguf_name: str, *, tied_output: bool = False) -> str:
    """The tensor's role: attn_q ... ffn_down, attn_norm, ffn_norm, token_embd, output, output_norm.

    A block tensor's role is the part after ``blk.N.`` (a bias has its weight's role); a tied
    ``token_embd`` is the output head too, so with ``tied_output`` its role is ``output``.
    Any other name is its own role, less ``.weight``.
    """
    if gguf_name == "token_embd.weight":
        return "output" if tied_output else "token_embd"
    if gguf_name == "output.weight":
        return "output"
    m = _BLOCK_TENSOR.match(gguf_name)
    return m.group(2) if m else gguf_name.removesuffix(".weight")


def rope_heads(arch: ArchInfo, gguf_name: str) -> int | None:
    """The heads the tensor's rows are rope-permuted over in llama.cpp's layout, or None if not."""
    if not arch.spec.permute_qk or layer_of(gguf_name) is None:
        return None
    role = role_of(gguf_name)
    if role == "attn_q":
        return arch.n_head
    if role == "attn_k":
        return arch.n_head_kv
    return None


def permute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from HF's half-split rope layout to llama.cpp's interleaved one.

    Within each head HF stores the rotated pairs as (first half, second half);
    llama.cpp's llama graph wants them adjacent. Works for weights [rows, in]
    and biases [rows]. transformers applies the inverse when it loads a GGUF.
    """
    rows = weight.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    half = rows // n_heads // 2
    tail = weight.shape[1:]
    grouped = weight.reshape(n_heads, 2, half, *tail)
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of :func:`permute_rope_rows` (llama.cpp layout back to HF)."""
    rows = weight.shape[0]
    half = rows // n_heads // 2
    tail = weight.shape[1:]
    grouped = weight.reshape(n_heads, half, 2, *tail)
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))


def to_gguf_layout(arch: ArchInfo, gguf_name: str, values: np.ndarray) -> np.ndarray:
    """HF orientation -> the rows llama.cpp stores (q/k rope permutation where the arch needs it)."""
    heads = rope_heads(arch, gguf_name)
    return values if heads is None else permute_rope_rows(values, heads)


def to_hf_layout(arch: ArchInfo, gguf_name: str, values: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_gguf_layout`: llama.cpp's rows back to HF orientation."""
    heads = rope_heads(arch, gguf_name)
    return values if heads is None else unpermute_rope_rows(values, heads)
