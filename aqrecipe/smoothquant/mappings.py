"""Smoothing groups: which norm's output feeds which linears, in llama.cpp's terms.

Only norm-preceded linears are smoothed: dividing the norm's weight by ``s`` and multiplying the
linears' input columns by ``s`` leaves the model's function unchanged. The auto groups are keyed
by GGUF roles, which llama.cpp's converter gives every family the same way, so no family's module
names are written here: ``attn_norm`` -> ``attn_q``/``attn_k``/``attn_v`` (or the fused
``attn_qkv`` of Phi-3) and ``ffn_norm`` -> ``ffn_gate``/``ffn_up`` (Phi-3's fused gate_up is
``ffn_up``). The HF modules come from the converter's own mapping (``gguf_names_of``): for Llama
``ffn_norm`` is ``post_attention_layernorm``, for Gemma 2/3 (whose ``post_attention_layernorm``
sits between attention and the residual: ``post_attention_norm``) it is ``pre_feedforward_layernorm``.
Whether a group really is equivalent is then checked on the module graph itself
(:mod:`aqrecipe.smoothquant.graph`); groups that are not are skipped with the reason.

Not smoothed (documented choice): v -> o and up -> down, which are not norm-preceded (v -> o
would need per-KV-head scale sharing under GQA). MoE models (config with experts): the attention
groups only, since experts and the router share the FFN norm. Gemma's norms compute
``x * (1 + w)``: :func:`norm_offset` returns 1.0 for them and the transform divides ``(1 + w)``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from aqrecipe.models.tensor_names import layer_of, role_of
from aqrecipe.smoothquant.config import GroupSpec, SmoothQuantConfig, SmoothQuantError

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

#: kind -> (the norm's GGUF role, the roles of the linears reading its output)
_AUTO = {"attn": ("attn_norm", ("attn_q", "attn_k", "attn_v", "attn_qkv")),
         "ffn": ("ffn_norm", ("ffn_gate", "ffn_up"))}
#: config.json model types whose RMSNorm computes x * (1 + w) (transformers' Gemma, Gemma 2, Gemma 3
#: text norms; Gemma 3n's do not, and neither does any other family the torch stages run)
_ONE_PLUS_W = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})


@dataclass(frozen=True)
class SmoothGroup:
    """One norm and the linears reading its output (HF module names and llama.cpp names)."""

    layer: int
    kind: str  # "attn" | "ffn" | "explicit"
    norm: str  # HF module name, e.g. model.layers.3.input_layernorm
    norm_gguf: str  # blk.3.attn_norm.weight
    linears: tuple[str, ...]  # HF module names (a fused module once: phi3's qkv_proj)
    linears_gguf: tuple[str, ...]  # the GGUF tensors they feed
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
    """1.0 for norms computing ``x * (1 + w)`` (Gemma, Gemma 2, Gemma 3), else 0.0.

    The graph check measures each smoothed norm's offset and skips a norm that disagrees.
    """
    return 1.0 if str(config.get("model_type", "")) in _ONE_PLUS_W else 0.0


class _Names:
    """The converter's mapping both ways, at HF module level (``...q_proj`` <-> ``blk.N.attn_q.weight``)."""

    def __init__(self, source: WeightSource) -> None:
        self.gguf_of: dict[str, tuple[str, ...]] = {}  # HF module -> GGUF tensors its weight feeds
        self.modules_of: dict[str, list[str]] = {}  # GGUF tensor -> HF modules feeding it
        for hf in _hf_weight_names(source):
            names = tuple(source.gguf_names_of(hf))
            if not names:
                continue
            module = hf.removesuffix(".weight")
            self.gguf_of[module] = names
            for g in names:
                self.modules_of.setdefault(g, []).append(module)
        self.layer_tensors: dict[int, dict[str, str]] = {}  # layer -> role -> GGUF name
        for t in source.tensors:
            layer = layer_of(t.gguf_name)
            if layer is not None and t.gguf_name.endswith(".weight"):
                self.layer_tensors.setdefault(layer, {})[role_of(t.gguf_name)] = t.gguf_name

    def first_gguf(self, module: str) -> str:
        return self.gguf_of[module][0]


def _hf_weight_names(source: WeightSource) -> list[str]:
    """Every HF ``*.weight`` tensor (the checkpoint's headers; the tensor table's sources without them)."""
    if getattr(source, "hf_folder", None) is not None:
        from aqrecipe.calibration.hf_model import hf_tensor_shapes

        return [n for n in hf_tensor_shapes(source) if n.endswith(".weight")]
    return sorted({t.hf_name for t in source.tensors if t.hf_name.endswith(".weight")})


def _pattern(text: str) -> re.Pattern[str]:
    base = text.removesuffix(".weight")
    return re.compile("^" + ".*".join(re.escape(p) for p in base.split("*")) + r"(\.weight)?$")


def _matches(pat: re.Pattern[str], *names: str) -> bool:
    return any(pat.match(n) for n in names)


def resolve_groups(source: WeightSource, cfg: SmoothQuantConfig) -> list[SmoothGroup]:
    """The smoothing groups of ``source`` under ``cfg`` (auto-inferred or explicit), layer order."""
    names = _Names(source)
    if cfg.mappings == "explicit":
        groups = _explicit(names, cfg.groups)
    else:
        groups = _auto(source, names)
        groups = [_override(g, cfg.groups) for g in groups]
        _check_overrides_used(groups, cfg.groups)
    return groups


def _auto(source: WeightSource, names: _Names) -> list[SmoothGroup]:
    kinds = ("attn",) if source.arch.is_moe else ("attn", "ffn")
    groups = []
    for layer in range(source.arch.n_layers):
        tensors = names.layer_tensors.get(layer, {})
        for kind in kinds:
            norm_role, linear_roles = _AUTO[kind]
            linears_gguf = tuple(tensors[r] for r in linear_roles if r in tensors)
            if norm_role not in tensors or not linears_gguf:
                raise SmoothQuantError(
                    f"cannot infer smoothing groups: layer {layer} has no "
                    f"{norm_role if norm_role not in tensors else ' / '.join(linear_roles)} tensor "
                    f"({source.arch.gguf_arch_name})",
                    hint="give the groups explicitly (mappings: {type: explicit, groups: [...]})")
            norm_modules = names.modules_of.get(tensors[norm_role], [])
            if len(norm_modules) != 1:
                raise SmoothQuantError(f"{tensors[norm_role]} is made from {len(norm_modules)} HF tensors; "
                                       "it cannot be smoothed as one norm",
                                       hint="give the groups explicitly or disable SmoothQuant for this model")
            linears = tuple(dict.fromkeys(m for g in linears_gguf for m in names.modules_of.get(g, [])))
            groups.append(SmoothGroup(layer, kind, norm_modules[0], tensors[norm_role], linears, linears_gguf))
    return groups


def _override(group: SmoothGroup, specs: Sequence[GroupSpec]) -> SmoothGroup:
    for spec in specs:  # first match wins
        if _matches(_pattern(spec.norm), group.norm, group.norm_gguf):
            return SmoothGroup(**{**group.__dict__, "alpha": spec.alpha})
    return group


def _check_overrides_used(groups: list[SmoothGroup], specs: Sequence[GroupSpec]) -> None:
    for spec in specs:
        pat = _pattern(spec.norm)
        if not any(_matches(pat, g.norm, g.norm_gguf) for g in groups):
            raise SmoothQuantError(f"alpha override {spec.norm!r} matches no smoothed norm",
                                   hint="auto groups are the attn_norm and ffn_norm of every layer "
                                        "(blk.N.attn_norm / blk.N.ffn_norm, or their HF module names)")


def _explicit(names: _Names, specs: Sequence[GroupSpec]) -> list[SmoothGroup]:
    groups: list[SmoothGroup] = []
    taken: dict[str, str] = {}
    modules = {m: names.first_gguf(m) for m in names.gguf_of}
    for i, spec in enumerate(specs):
        pat = _pattern(spec.norm)
        norms = [hf for hf, gg in modules.items() if "norm" in hf and _matches(pat, hf, gg)]
        if not norms:
            raise SmoothQuantError(f"mappings.groups[{i}].norm {spec.norm!r} matches no norm",
                                   hint="use e.g. 'model.layers.*.input_layernorm' or 'blk.*.attn_norm'")
        for norm in norms:
            layer = layer_of(modules[norm])
            if layer is None:
                raise SmoothQuantError(f"mappings.groups[{i}]: {norm} is not inside a decoder layer",
                                       hint="only decoder-layer norms can be smoothed (the final norm "
                                            "feeds the output head, which stays in 16-bit)")
            prefix = norm[: norm.index(f".{layer}.") + len(f".{layer}.")]
            gprefix = f"blk.{layer}."
            linears = []
            for hf, gg in modules.items():
                if not hf.startswith(prefix) or "norm" in hf or layer_of(gg) != layer:
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
            groups.append(SmoothGroup(layer, "explicit", norm, modules[norm], tuple(linears),
                                      tuple(dict.fromkeys(g for m in linears for g in names.gguf_of[m])),
                                      spec.alpha))
    groups.sort(key=lambda g: (g.layer, g.norm))
    return groups
