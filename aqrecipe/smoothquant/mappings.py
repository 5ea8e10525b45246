"""Smoothing groups: which norm's output feeds which linears, per architecture.

Only norm-preceded linears are smoothed: dividing the norm's weight by ``s``
and multiplying the linears' input columns by ``s`` leaves the model's function
unchanged. For llama / mistral / qwen2 that is q/k/v after ``input_layernorm``
and gate/up after ``post_attention_layernorm``. Not smoothed (documented
choice): v -> o and up -> down, which are not norm-preceded (v -> o would need
per-KV-head scale sharing under GQA). MoE models (config with experts): the
attention groups only, since experts and the router share the FFN norm.
Gemma's norms compute ``x * (1 + w)``; :func:`norm_offset` returns 1.0 for it
and the transform divides ``(1 + w)`` rather than ``w`` (aqrecipe loads
llama / qwen2 today, so this path is exercised by unit tests only).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from aqrecipe.smoothquant.config import GroupSpec, SmoothQuantConfig, SmoothQuantError

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

_LAYER_HF = re.compile(r"^model\.layers\.(\d+)\.")
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
_AUTO = {"attn": ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
         "ffn": ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))}


@dataclass(frozen=True)
class SmoothGroup:
    """One norm and the linears reading its output (HF module names and llama.cpp names)."""

    layer: int
    kind: str  # "attn" | "ffn" | "explicit"
    norm: str  # HF module name, e.g. model.layers.3.input_layernorm
    norm_gguf: str  # blk.3.attn_norm.weight
    linears: tuple[str, ...]  # HF module names
    linears_gguf: tuple[str, ...]
    alpha: float | None = None  # per-group override

    @property
    def key(self) -> str:
        """Stable short name used in reports and the scales file (``blk.3.attn_norm``)."""
        return self.norm_gguf.removesuffix(".weight")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["linears"], d["linears_gguf"] = list(self.linears), list(self.linears_gguf)
        return d


def norm_offset(config: dict[str, Any]) -> float:
    """1.0 for norms computing ``x * (1 + w)`` (gemma family), else 0.0."""
    return 1.0 if str(config.get("model_type", "")).startswith("gemma") else 0.0


def is_moe(config: dict[str, Any]) -> bool:
    return any(int(config.get(k) or 0) > 0 for k in _MOE_KEYS)


def _gguf_names(source: WeightSource) -> dict[str, str]:
    return {t.hf_name.removesuffix(".weight"): t.gguf_name for t in source.tensors
            if t.hf_name.endswith(".weight")}


def _pattern(text: str) -> re.Pattern[str]:
    base = text.removesuffix(".weight")
    return re.compile("^" + ".*".join(re.escape(p) for p in base.split("*")) + r"(\.weight)?$")


def _matches(pat: re.Pattern[str], *names: str) -> bool:
    return any(pat.match(n) for n in names)


def resolve_groups(source: WeightSource, cfg: SmoothQuantConfig) -> list[SmoothGroup]:
    """The smoothing groups of ``source`` under ``cfg`` (auto-inferred or explicit), layer order."""
    names = _gguf_names(source)
    if cfg.mappings == "explicit":
        groups = _explicit(names, cfg.groups)
    else:
        groups = _auto(source, names)
        groups = [_override(g, cfg.groups) for g in groups]
        _check_overrides_used(groups, names, cfg.groups)
    return groups


def _auto(source: WeightSource, names: dict[str, str]) -> list[SmoothGroup]:
    kinds = ("attn",) if is_moe(source.config) else ("attn", "ffn")
    groups = []
    for layer in range(source.arch.n_layers):
        for kind in kinds:
            norm_rel, lin_rel = _AUTO[kind]
            norm = f"model.layers.{layer}.{norm_rel}"
            linears = tuple(f"model.layers.{layer}.{r}" for r in lin_rel)
            missing = [n for n in (norm, *linears) if n not in names]
            if missing:
                raise SmoothQuantError(
                    f"cannot infer smoothing groups: {missing[0]} is missing "
                    f"({source.arch.hf_model_type} layer {layer})",
                    hint="give the groups explicitly (mappings: {type: explicit, groups: [...]})")
            groups.append(SmoothGroup(layer, kind, norm, names[norm], linears,
                                      tuple(names[n] for n in linears)))
    return groups


def _override(group: SmoothGroup, specs: Sequence[GroupSpec]) -> SmoothGroup:
    for spec in specs:  # first match wins
        if _matches(_pattern(spec.norm), group.norm, group.norm_gguf):
            return SmoothGroup(**{**group.__dict__, "alpha": spec.alpha})
    return group


def _check_overrides_used(groups: list[SmoothGroup], names: dict[str, str], specs: Sequence[GroupSpec]) -> None:
    for spec in specs:
        pat = _pattern(spec.norm)
        if not any(_matches(pat, g.norm, g.norm_gguf) for g in groups):
            raise SmoothQuantError(f"alpha override {spec.norm!r} matches no smoothed norm",
                                   hint="auto groups use input_layernorm / post_attention_layernorm "
                                        "(blk.N.attn_norm / blk.N.ffn_norm)")


def _explicit(names: dict[str, str], specs: Sequence[GroupSpec]) -> list[SmoothGroup]:
    groups: list[SmoothGroup] = []
    taken: dict[str, str] = {}
    for i, spec in enumerate(specs):
        pat = _pattern(spec.norm)
        norms = [hf for hf, gg in names.items() if "norm" in hf and _matches(pat, hf, gg)]
        if not norms:
            raise SmoothQuantError(f"mappings.groups[{i}].norm {spec.norm!r} matches no norm",
                                   hint="use e.g. 'model.layers.*.input_layernorm' or 'blk.*.attn_norm'")
        for norm in norms:
            m = _LAYER_HF.match(norm)
            if m is None:
                raise SmoothQuantError(f"mappings.groups[{i}]: {norm} is not inside a decoder layer",
                                       hint="only decoder-layer norms can be smoothed (the final norm "
                                            "feeds the output head, which stays in 16-bit)")
            prefix = m.group(0)
            gprefix = f"blk.{m.group(1)}."
            linears = []
            for hf, gg in names.items():
                if not hf.startswith(prefix) or "norm" in hf:
                    continue
                rel, grel = hf[len(prefix):], gg.removeprefix(gprefix)
                if any(_matches(_pattern(p), hf, gg, rel, grel) for p in spec.linears):
                    linears.append(hf)
            if not linears:
                raise SmoothQuantError(f"mappings.groups[{i}]: no linear of {norm}'s layer matches "
                                       f"{list(spec.linears)}",
                                       hint="name them like 'self_attn.q_proj' or 'attn_q'")
            for lin in linears:
                if lin in taken:
                    raise SmoothQuantError(f"{lin} is in two smoothing groups ({taken[lin]} and {norm})",
                                           hint="each linear may be smoothed by one norm only")
                taken[lin] = norm
            groups.append(SmoothGroup(int(m.group(1)), "explicit", norm, names[norm], tuple(linears),
                                      tuple(names[n] for n in linears), spec.alpha))
    groups.sort(key=lambda g: (g.layer, g.norm))
    return groups
