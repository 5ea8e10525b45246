"""llama.cpp file-type mixtures: what users expect ``--type Q4_K_M`` to mean.

A mixture is a base type plus per-tensor bumps that depend on the tensor's
role (attn_v, ffn_down, attn_output, output, token_embd) and its layer. The
rules follow llama.cpp's quantizer for dense (non-MoE) models so that a file
made here has the same per-tensor types as ``llama-quantize`` would choose.
"""

from __future__ import annotations

from dataclasses import dataclass

from aqrecipe.quant.blocktypes import FLOAT_TYPES, file_type_for, layout
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
    """What a mixture needs to know about one tensor.

    The counters are llama.cpp's: how many attn_v-like (attn_v, attn_qkv, attn_kv_b) and ffn_down-like
    (ffn_down, ffn_down_exps, ffn_down_shexp) quantizable tensors come before this one in the file.
    In a dense model each equals the layer index; in a mixture of experts with shared experts the
    ffn_down counter runs twice as fast, which llama.cpp's IQ mixtures read as is.
    """

    gguf_name: str
    row_len: int
    layer: int | None  # decoder layer index, None for token_embd/output
    n_layers: int
    n_gqa: int  # n_head / n_head_kv
    has_output: bool  # False when output is tied to token_embd
    n_expert: int = 0  # routed experts per layer (0: dense)
    attn_v_index: int | None = None  # None: the layer index
    n_attn_v: int | None = None  # attn_v-like tensors in the model; None: n_layers
    ffn_down_index: int | None = None  # None: the layer index


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


def category(name: str) -> str:
    """llama.cpp's tensor category by name (substring tests in its order): attn_v (also the fused
    attn_qkv and MLA's attn_kv_b, which its mixtures treat alike), attn_k, attn_output, ffn_down (dense, routed and shared
    experts alike), or the name itself."""
    if "attn_qkv.weight" in name or "attn_kv_b.weight" in name or "attn_v.weight" in name:
        return "attn_v"
    for found in ("attn_k.weight", "attn_output.weight"):
        if found in name:
            return found.split(".")[0]
    if "ffn_down" in name:
        return "ffn_down"
    return name


def is_attn_v_like(name: str) -> bool:
    """The tensors llama.cpp counts as attn_v (its ``n_attention_wv``)."""
    return category(name) == "attn_v"


def is_ffn_down_like(name: str) -> bool:
    """The tensors llama.cpp counts as ffn_down (its ``i_ffn_down``)."""
    return category(name) == "ffn_down"


def mixture_type(mixture: Mixture, base_type: str, t: TensorContext) -> tuple[str, str]:
    """The type a mixture gives one tensor, and a short reason for the plan.

    ``base_type`` is the mixture's base type unless the recipe's ``default``
    overrides it. Fallbacks for rows that do not fit are applied later.
    Mixtures of experts follow llama.cpp's bumps for 4 and 8 experts.
    """
    m = mixture.name
    name = t.gguf_name
    if mixture.base_type in FLOAT_TYPES:  # llama.cpp picks per-tensor types only for quantized file types
        return base_type, f"{m} base type"
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
    role = category(name)
    attn_v_i = t.layer if t.attn_v_index is None else t.attn_v_index
    n_attn_v = t.n_layers if t.n_attn_v is None else t.n_attn_v
    ffn_down_i = t.layer if t.ffn_down_index is None else t.ffn_down_index
    experts = f", {t.n_expert} experts" if t.n_expert > 1 else ""
    if m in _IQ_LOW:
        if role == "attn_v":
            if t.n_gqa >= 4 or t.n_expert >= 4:
                return "Q4_K", f"{m}: attn_v (GQA {t.n_gqa}{experts})"
            return "Q2_K", f"{m}: attn_v (GQA {t.n_gqa})"
        if role == "attn_k" and t.n_expert == 8:
            return "Q4_K", f"{m}: attn_k{experts}"
        if role == "ffn_down" and ffn_down_i < t.n_layers // 8:
            return "Q2_K", f"{m}: ffn_down in the first eighth"
        if role == "attn_output":
            if t.n_expert == 8:
                return "Q5_K", f"{m}: attn_output{experts}"
            if m in ("IQ1_S", "IQ1_M"):
                return "IQ2_XXS", f"{m}: attn_output"
        return base_type, f"{m} base type"
    if role == "attn_v":
        if t.n_expert == 8:
            return "Q8_0", f"{m}: attn_v{experts}"
        if m == "Q2_K":
            return ("Q4_K" if t.n_gqa >= 4 else "Q3_K"), f"{m}: attn_v (GQA {t.n_gqa})"
        if m == "Q3_K_M":
            return ("Q5_K" if attn_v_i < 2 else "Q4_K"), f"{m}: attn_v"
        if m in ("Q4_K_M", "Q5_K_M") and use_more_bits(attn_v_i, n_attn_v):
            return "Q6_K", f"{m}: attn_v in a more-bits layer"
        if m == "Q4_K_S" and attn_v_i < 4:
            return "Q5_K", f"{m}: attn_v in the first 4 layers"
    elif role == "attn_k":
        if t.n_expert == 8:
            return "Q8_0", f"{m}: attn_k{experts}"
    elif role == "ffn_down":
        i = t.layer if t.n_expert > 1 else ffn_down_i  # llama.cpp reads an MoE layer from the name
        n = t.n_layers
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
        if t.n_expert == 8:
            if m in ("Q2_K", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                return "Q5_K", f"{m}: attn_output{experts}"
        elif m == "Q2_K":
            return "Q3_K", f"{m}: attn_output"
        elif m == "Q3_K_M":
            return "Q4_K", f"{m}: attn_output"
    return base_type, f"{m} base type"
