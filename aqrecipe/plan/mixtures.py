"""llama.cpp file-type mixtures: what users expect ``--type Q4_K_M`` to mean.

A mixture is a base type plus per-tensor bumps that depend on the tensor's
role (attn_v, ffn_down, attn_output, output, token_embd) and its layer. The
rules follow llama.cpp's quantizer for dense (non-MoE) models so that a file
made here has the same per-tensor types as ``llama-quantize`` would choose.
"""

from __future__ import annotations

from dataclasses import dataclass

from aqrecipe.quant.blocktypes import file_type_for, layout
from aqrecipe.errors import PlanError


@dataclass(frozen=True)
class Mixture:
    """A llama.cpp file type: its name and base tensor type."""

    name: str
    base_type: str

    @property
    def file_type(self) -> int:
        """``general.file_type``, from the one table in :mod:`aqrecipe.quant.blocktypes`."""
        return int(file_type_for(self.name))


MIXTURES: dict[str, Mixture] = {
    m.name: m
    for m in (
        Mixture("F16", "F16"),
        Mixture("BF16", "BF16"),
        Mixture("Q8_0", "Q8_0"),
        Mixture("Q4_0", "Q4_0"),
        Mixture("Q4_1", "Q4_1"),
        Mixture("Q5_0", "Q5_0"),
        Mixture("Q5_1", "Q5_1"),
        Mixture("Q2_K", "Q2_K"),
        Mixture("Q3_K_M", "Q3_K"),
        Mixture("Q4_K_S", "Q4_K"),
        Mixture("Q4_K_M", "Q4_K"),
        Mixture("Q5_K_S", "Q5_K"),
        Mixture("Q5_K_M", "Q5_K"),
        Mixture("Q6_K", "Q6_K"),
        Mixture("IQ2_XXS", "IQ2_XXS"),
        Mixture("IQ1_S", "IQ1_S"),
        Mixture("IQ1_M", "IQ1_M"),
        Mixture("TQ1_0", "TQ1_0"),
        Mixture("TQ2_0", "TQ2_0"),
    )
}

_IQ_LOW = frozenset({"IQ2_XXS", "IQ1_S", "IQ1_M"})


@dataclass(frozen=True)
class TensorContext:
    """What a mixture needs to know about one tensor."""

    gguf_name: str
    row_len: int
    layer: int | None  # decoder layer index, None for token_embd/output
    n_layers: int
    n_gqa: int  # n_head / n_head_kv
    has_output: bool  # False when output is tied to token_embd


def get_mixture(name: str) -> Mixture:
    """Look a mixture up by name; unknown names list the known ones."""
    try:
        return MIXTURES[name]
    except KeyError:
        raise PlanError(
            f"unknown mixture {name!r}", hint=f"use one of: {', '.join(MIXTURES)}"
        ) from None


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's "more bits" layers: first and last eighth, every third in between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _role(name: str) -> str:
    for role in ("attn_v.weight", "ffn_down", "attn_output.weight", "attn_qkv.weight"):
        if role in name:
            return role.split(".")[0]
    return name


def mixture_type(mixture: Mixture, base_type: str, t: TensorContext) -> tuple[str, str]:
    """The type a mixture gives one tensor, and a short reason for the plan.

    ``base_type`` is the mixture's base type unless the recipe's ``default``
    overrides it. Fallbacks for rows that do not fit are applied later.
    """
    m = mixture.name
    name = t.gguf_name
    is_output = name == "output.weight" or (not t.has_output and name == "token_embd.weight")
    if is_output:
        if t.row_len % layout(base_type).block_weights != 0:
            return "Q8_0", f"{m}: output rows do not fit {base_type} blocks"
        if m in _IQ_LOW:
            return "Q5_K", f"{m}: output tensor"
        if base_type not in ("Q8_0", "F16", "BF16"):
            return "Q6_K", f"{m}: output tensor"
        return base_type, f"{m} base type"
    if name == "token_embd.weight":
        if m in _IQ_LOW:
            return "Q2_K", f"{m}: token embeddings"
        if m in ("TQ1_0", "TQ2_0"):
            return "Q4_K", f"{m}: token embeddings"
        return base_type, f"{m} base type"
    if t.layer is None:
        return base_type, f"{m} base type"
    i, n = t.layer, t.n_layers
    role = _role(name)
    if m in _IQ_LOW:
        if role == "attn_v":
            return ("Q4_K" if t.n_gqa >= 4 else "Q2_K"), f"{m}: attn_v (GQA {t.n_gqa})"
        if role == "ffn_down" and i < n // 8:
            return "Q2_K", f"{m}: ffn_down in the first eighth"
        if role == "attn_output" and m in ("IQ1_S", "IQ1_M"):
            return "IQ2_XXS", f"{m}: attn_output"
        return base_type, f"{m} base type"
    if role == "attn_v":
        if m == "Q2_K":
            return ("Q4_K" if t.n_gqa >= 4 else "Q3_K"), f"{m}: attn_v (GQA {t.n_gqa})"
        if m == "Q3_K_M":
            return ("Q5_K" if i < 2 else "Q4_K"), f"{m}: attn_v"
        if m in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            return "Q6_K", f"{m}: attn_v in a more-bits layer"
        if m == "Q4_K_S" and i < 4:
            return "Q5_K", f"{m}: attn_v in the first 4 layers"
    elif role == "ffn_down":
        if m == "Q2_K":
            return "Q3_K", f"{m}: ffn_down"
        if m == "Q3_K_M":
            kind = "Q5_K" if i < n // 16 else "Q4_K"
            return kind, f"{m}: ffn_down"
        if m in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
            return "Q6_K", f"{m}: ffn_down in a more-bits layer"
        if m == "Q4_K_S" and i < n // 8:
            return "Q5_K", f"{m}: ffn_down in the first eighth"
    elif role == "attn_output":
        if m == "Q2_K":
            return "Q3_K", f"{m}: attn_output"
        if m == "Q3_K_M":
            return "Q4_K", f"{m}: attn_output"
    elif role == "attn_qkv":  # fused q/k/v (Phi-3 and others): llama.cpp bumps it as a whole
        bumped = {"Q3_K_M": "Q4_K", "Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}.get(m)
        if bumped:
            return bumped, f"{m}: attn_qkv"
    return base_type, f"{m} base type"
