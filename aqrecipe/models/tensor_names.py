"""Tensor-name facts, in one place: the layer and role a GGUF name says, and llama.cpp's tensor order.

GGUF (llama.cpp) names: ``token_embd.weight``, ``blk.N.ROLE.weight`` (or ``.bias``),
``output_norm.weight``, ``output.weight``. HF names hold their layer as ``.layers.N.``.
"""

from __future__ import annotations

import re

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


def gguf_order_key(gguf_name: str) -> tuple:
    """token_embd, blk.0 .. blk.N (by name within a block), output_norm, output, others."""
    if gguf_name.startswith("token_embd."):
        return (0, 0, gguf_name)
    layer = layer_of(gguf_name)
    if layer is not None:
        return (1, layer, gguf_name)
    if gguf_name.startswith("output_norm."):
        return (2, 0, gguf_name)
    if gguf_name.startswith("output."):
        return (3, 0, gguf_name)
    return (4, 0, gguf_name)
