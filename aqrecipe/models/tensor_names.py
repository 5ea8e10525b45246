"""Tensor-name facts, in one place: the layer and role a GGUF name says, and llama.cpp's tensor order.

GGUF (llama.cpp) names: ``token_embd.weight``, ``blk.N.ROLE.weight`` (or ``.bias``),
``output_norm.weight``, ``output.weight``. HF names hold their layer as ``.layers.N.``.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(?:weight|bias)$")
_HF_LAYER = re.compile(r"\.layers\.(\d+)\.")
_HF_EXPERT = re.compile(r"\.experts\.(\d+)\.")
#: joins a merged-expert GGUF name and an expert index in per-expert statistics keys
EXPERT_KEY_SEP = "#"

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


def hf_expert_of(hf_name: str) -> int | None:
    """The routed expert of a checkpoint name (``...mlp.experts.5.down_proj.weight`` -> 5), or None."""
    m = _HF_EXPERT.search(hf_name)
    return int(m.group(1)) if m else None


def expert_key(gguf_name: str, expert: int) -> str:
    """The statistics key of one expert's slice of a merged-expert tensor (``blk.0.ffn_up_exps.weight#3``)."""
    return f"{gguf_name}{EXPERT_KEY_SEP}{expert}"


def split_expert_key(key: str) -> tuple[str, int | None]:
    """``(gguf name, expert)`` of a statistics key; expert None for a whole tensor's key."""
    name, sep, expert = key.rpartition(EXPERT_KEY_SEP)
    return (name, int(expert)) if sep and expert.isdigit() else (key, None)


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


#: Role groups a recipe rule can name (``role: experts``), besides any single role (``role: ffn_down_exps``).
ROLE_GROUPS = {
    "experts": "the routed experts of a mixture-of-experts layer (llama.cpp's merged ffn_*_exps tensors)",
    "shared_experts": "the shared experts every token passes through (ffn_*_shexp)",
    "router": "the expert routers (ffn_gate_inp*); never quantized, as in llama.cpp",
    "attention": "the attention projections (attn_*, norms excluded)",
    "dense_ffn": "the feed-forward tensors of dense layers (ffn_gate, ffn_up, ffn_down)",
    "token_embd": "the token embeddings",
    "output": "the output head (a tied token_embd included)",
}


def role_groups(role: str) -> tuple[str, ...]:
    """The groups of :data:`ROLE_GROUPS` a role (from :func:`role_of`) belongs to."""
    if role in ("token_embd", "output"):
        return (role,)
    if role.startswith("ffn_gate_inp") or role == "exp_probs_b":
        return ("router",)
    if role.endswith("_exps"):
        return ("experts",)
    if role.endswith("_shexp"):
        return ("shared_experts",)
    if role.startswith("attn_") and "norm" not in role:
        return ("attention",)
    if role in ("ffn_gate", "ffn_up", "ffn_down"):
        return ("dense_ffn",)
    return ()


def answers_to_role(gguf_name: str, role: str, *, tied_output: bool = False) -> bool:
    """Whether a tensor has ``role`` (a role such as ``ffn_down_exps``, or a group of :data:`ROLE_GROUPS`)."""
    own = role_of(gguf_name, tied_output=tied_output)
    return role == own or role in role_groups(own)


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
