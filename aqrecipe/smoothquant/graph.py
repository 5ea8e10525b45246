"""Whether a smoothing group is an exact equivalence, checked on the model's own module graph.

Smoothing divides a norm's effective scale ``offset + w`` by ``s`` and multiplies the input
columns of the group's linears by ``s``. That leaves the model unchanged exactly when

* the norm's output is ``normalize(x) * (offset + w)`` (+ bias) with the offset the transform
  uses (Gemma's ``(1 + w)`` norms have offset 1), measured here by evaluating the norm with its
  weight set to 0 and to 1;
* every linear of the group reads the norm's output itself (the very tensor object), and no
  other module reads it (Gemma 2/3's ``post_attention_layernorm`` output goes to the residual,
  so it is no smoothing norm; a parallel attention + MLP block would feed both from one norm).

A probe forward pass with hooks on every leaf module finds the readers. Groups failing a
condition are skipped with the reason; what the hooks cannot see (arithmetic on the norm's
output outside any module) is caught by the run's logit-equivalence check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from aqrecipe.smoothquant.mappings import SmoothGroup

#: The norm's output must follow normalize(x) * (offset + w) + b to this relative error.
AFFINE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SkippedGroup:
    """A group smoothing would not leave equivalent, and why."""

    group: str  # the group's key, e.g. blk.3.ffn_norm
    norm: str  # HF module name
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_groups(model: Any, groups: Sequence[SmoothGroup], offset: float, probe_ids: np.ndarray
                 ) -> tuple[list[SmoothGroup], list[SkippedGroup]]:
    """Split ``groups`` into those that are equivalences on ``model`` and those skipped (with reasons)."""
    modules = dict(model.named_modules())
    readers = _readers(model, [g.norm for g in groups if g.norm in modules], probe_ids)
    kept, skipped = [], []
    for g in groups:
        reason = (_structure(modules, g) or _offset_problem(modules[g.norm], offset)
                  or _reader_problem(g, readers.get(g.norm, set())))
        if reason is None:
            kept.append(g)
        else:
            skipped.append(SkippedGroup(g.key, g.norm, reason))
    return kept, skipped


def _structure(modules: dict[str, Any], g: SmoothGroup) -> str | None:
    import torch

    norm = modules.get(g.norm)
    if norm is None:
        return f"the model has no module {g.norm}"
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1:
        return f"{g.norm} has no per-channel weight to divide"
    for name in g.linears:
        lin = modules.get(name)
        if not isinstance(lin, torch.nn.Linear):
            return f"{name} is not a linear module of the model"
        if lin.in_features != weight.numel():
            return f"{name} reads {lin.in_features} channels, {g.norm} has {weight.numel()}"
    return None


def measured_offset(norm: Any) -> tuple[float, float]:
    """``(offset, error)``: the norm fitted as ``normalize(x) * (offset + w) + b``, and the fit's relative error."""
    import torch

    weight = norm.weight
    bias = getattr(norm, "bias", None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, weight.numel(), generator=gen, dtype=torch.float32).to(weight.dtype)
    saved_w = weight.detach().clone()
    saved_b = bias.detach().clone() if isinstance(bias, torch.Tensor) else None
    with torch.no_grad():
        try:
            y = norm(x).double()
            if saved_b is not None:
                bias.zero_()
            weight.zero_()
            y0 = norm(x).double()  # normalize(x) * offset
            weight.fill_(1.0)
            unit = norm(x).double() - y0  # normalize(x)
        finally:
            weight.copy_(saved_w)
            if saved_b is not None:
                bias.copy_(saved_b)
    denom = float((unit * unit).sum())
    if denom == 0.0:
        return 0.0, float("inf")
    offset = float((y0 * unit).sum()) / denom
    b = saved_b.double() if saved_b is not None else 0.0
    predicted = unit * (offset + saved_w.double()) + b
    error = float((y - predicted).abs().max()) / max(float(y.abs().max()), 1e-30)
    return offset, error


def _offset_problem(norm: Any, offset: float) -> str | None:
    found, error = measured_offset(norm)
    if error > AFFINE_TOLERANCE:
        return "the norm's output is not normalize(x) * weight: dividing its weight would not divide its output"
    if abs(found - offset) > 1e-3:
        return (f"the norm computes x * ({found:g} + w) but the transform assumes ({offset:g} + w) "
                "(norm_offset of this model type)")
    return None


def _reader_problem(g: SmoothGroup, readers: set[str]) -> str | None:
    absent = [name for name in g.linears if name not in readers]
    if absent:
        return f"{absent[0]} does not read {g.norm}'s output"
    others = sorted(readers - set(g.linears))
    if others:
        return f"{g.norm}'s output also feeds {others[0]}, which the group does not smooth"
    return None


def _readers(model: Any, norms: Sequence[str], probe_ids: np.ndarray) -> dict[str, set[str]]:
    """Per norm: the leaf modules whose input is the norm's output tensor itself, in one probe forward."""
    import torch

    outputs: dict[str, Any] = {}
    readers: dict[str, set[str]] = {n: set() for n in norms}
    handles = []

    def keep(name: str):
        def hook(_module: Any, _args: Any, out: Any) -> None:
            outputs[name] = out

        return hook

    def look(name: str):
        def hook(_module: Any, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else next(iter(kwargs.values()), None)
            for norm, out in outputs.items():
                if first is out:
                    readers[norm].add(name)

        return hook

    modules = dict(model.named_modules())
    for name in norms:
        handles.append(modules[name].register_forward_hook(keep(name)))
    for name, module in modules.items():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_pre_hook(look(name), with_kwargs=True))
    try:
        with torch.inference_mode():
            model(input_ids=torch.as_tensor(np.asarray(probe_ids, dtype=np.int64)), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return readers
