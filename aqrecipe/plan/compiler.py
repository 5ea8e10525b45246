"""Compile a quantization spec against a model's headers into a :class:`Plan`.

Reads no weights: shapes come from the safetensors headers and config.json,
so compiling a 70B model takes well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from aqrecipe.quant.blocktypes import FLOAT_TYPES, NEEDS_IMATRIX, fallback_for, file_type_for, layout
from aqrecipe.quant.sizes import tensor_bytes
from aqrecipe.errors import PlanError
from aqrecipe.models.tensor_names import layer_of
from aqrecipe.plan.mixtures import TensorContext, get_mixture, is_attn_v_like, is_ffn_down_like, mixture_type
from aqrecipe.plan.model import Plan, PlanEntry
from aqrecipe.plan.rules import Rule, RuleSet, output_aliases, rule_reason, unused_entry
from aqrecipe.recipe.rounding import RTN, Rounding

if TYPE_CHECKING:
    from aqrecipe.models import ModelSource

@dataclass(frozen=True)
class PlanSpec:
    """What decides the types: a mixture, a default type and rules."""

    mixture: str | None = None
    default: str | None = None
    rules: tuple[Rule, ...] = ()
    rounding: Rounding = RTN  # of every quantized tensor a rule with its own rounding does not choose

    def base_type(self) -> str:
        if self.default:
            return self.default
        if self.mixture:
            return get_mixture(self.mixture).base_type
        raise PlanError("no quantization type given", hint="set quantization.mixture or quantization.default")

    def file_type(self) -> int:
        """``general.file_type``: the mixture's, as llama-quantize writes the one it was asked for."""
        if self.mixture:
            return get_mixture(self.mixture).file_type
        return int(file_type_for(self.base_type()))


def is_quantizable(gguf_name: str, shape: Sequence[int]) -> bool:
    """llama.cpp quantizes 2-D weights and 3-D merged experts, never norms or MoE routers."""
    return len(shape) in (2, 3) and "norm" not in gguf_name and "ffn_gate_inp" not in gguf_name


def entry_rounding(gguf_name: str, type_name: str, rounding: Rounding) -> dict | None:
    """A plan entry's rounding: gptq only for block-quantized linear weights (the token embedding is
    looked up, not multiplied with an input, so it has no Hessian and keeps round-to-nearest)."""
    if not rounding.is_gptq or type_name in FLOAT_TYPES or gguf_name == "token_embd.weight":
        return None
    return rounding.to_dict()


def compile_plan(
    source: ModelSource,
    spec: PlanSpec,
    *,
    model_ref: str,
    recipe_text: str | None = None,
    recipe_path: str | None = None,
    options: dict | None = None,
) -> Plan:
    """Choose a type for every tensor of ``source`` and size the result."""
    for rule in spec.rules:
        layout(rule.type)  # unknown type names fail loudly with the allowed list
    base = spec.base_type()
    layout(base)
    mixture = get_mixture(spec.mixture) if spec.mixture else None
    arch = source.arch
    names = {t.gguf_name for t in source.tensors}
    has_output = "output.weight" in names
    n_gqa = max(1, arch.n_head // max(1, arch.n_head_kv))
    ruleset = RuleSet(list(spec.rules))
    n_attn_v = sum(1 for t in source.tensors if is_attn_v_like(t.gguf_name))
    attn_v_seen = ffn_down_seen = 0  # llama.cpp's counters, in file order

    entries = []
    for info in source.tensors:
        shape = tuple(int(d) for d in info.shape)
        n_params = 1
        for d in shape:
            n_params *= d
        rounding = spec.rounding
        if not is_quantizable(info.gguf_name, shape):
            why = "expert router" if "ffn_gate_inp" in info.gguf_name else "1-D or norm"
            requested, chosen_by = "F32", f"not quantized ({why})"
            ruleset.keep(info.gguf_name, info.hf_name)  # a rule naming only such tensors is told so
        else:
            aliases = output_aliases(info.gguf_name, has_output=has_output)  # a tied token_embd is the output
            rule = ruleset.match(info.gguf_name, info.hf_name, aliases=aliases)
            if rule is not None:
                requested, chosen_by = rule.type, rule_reason(rule, info.gguf_name, info.hf_name)
                rounding = rule.rounding or rounding
            elif mixture is not None:
                ctx = TensorContext(info.gguf_name, shape[-1], layer_of(info.gguf_name), arch.n_layers, n_gqa,
                                    has_output, n_expert=arch.n_expert, attn_v_index=attn_v_seen,
                                    n_attn_v=n_attn_v, ffn_down_index=ffn_down_seen)
                requested, chosen_by = mixture_type(mixture, base, ctx)
            else:
                requested, chosen_by = base, "default"
            attn_v_seen += is_attn_v_like(info.gguf_name)
            ffn_down_seen += is_ffn_down_like(info.gguf_name)
        final = fallback_for(requested, shape[-1])
        if final != requested:
            chosen_by += f"; rows of {shape[-1]} do not fit {requested} blocks of {layout(requested).block_weights}, fallback {final}"
        entries.append(
            PlanEntry(
                gguf_name=info.gguf_name,
                hf_name=info.hf_name,
                shape=shape,
                source_dtype=info.dtype,
                type=final,
                requested_type=requested,
                chosen_by=chosen_by,
                n_params=n_params,
                n_bytes=tensor_bytes(final, shape),
                rounding=entry_rounding(info.gguf_name, final, rounding),
            )
        )
    return Plan(
        model=model_ref,
        model_path=str(source.path),
        model_fingerprint=source.fingerprint(),
        arch=str(arch.gguf_arch_name),
        mixture=spec.mixture,
        file_type=spec.file_type(),
        entries=tuple(entries),
        unused_rules=tuple(unused_entry(r, why) for r, why in ruleset.unused_reasons()),
        needs_imatrix=tuple(e.gguf_name for e in entries if e.type in NEEDS_IMATRIX),
        recipe_text=recipe_text,
        recipe_path=recipe_path,
        options=dict(options or {}),
    )
