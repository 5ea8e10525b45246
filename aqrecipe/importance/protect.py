"""Protecting super weights: plan rules, imatrix emphasis, exact-value restore.

GGUF output (llama.cpp reads the packed blocks, so values cannot be patched
afterwards): every tensor holding a super weight gets an exact-name rule for the
configured type, and the imatrix importance of the super weights' columns is
multiplied by ``imatrix_boost`` so the quantizer's weighted search favours them
(whatever type the tensor ends up with). Simulated quantization and safetensors
output: :func:`restore_super_weights` writes the exact values back after
quantization.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from aqrecipe.quant.blocktypes import layout
from aqrecipe.importance.config import ProtectSpec, SuperWeightsSection
from aqrecipe.importance.model import ImportanceMatrix, SuperWeight
from aqrecipe.plan import Rule

if TYPE_CHECKING:
    from aqrecipe.imatrix.data import ImatrixData

ORIGIN = "super_weights.protect"


def _weights(obj: ImportanceMatrix | Iterable[SuperWeight]) -> list[SuperWeight]:
    return list(obj.super_weights) if isinstance(obj, ImportanceMatrix) else list(obj)


def protection_rules(super_weights: ImportanceMatrix | Iterable[SuperWeight], tensor_type: str) -> list[Rule]:
    """One exact-name rule per tensor that holds a super weight (sorted, no duplicates)."""
    names = sorted({sw.tensor for sw in _weights(super_weights)})
    return [Rule(pattern=n, type=tensor_type, kind="exact", origin=ORIGIN) for n in names]


def boost_imatrix(imatrix: ImatrixData, super_weights: ImportanceMatrix | Iterable[SuperWeight], factor: float
                  ) -> ImatrixData:
    """A copy of ``imatrix`` with each super weight's column importance multiplied by ``factor``.

    Only the entries that change are copied; ``imatrix`` itself is not modified.
    """
    from aqrecipe.imatrix import ImatrixData, ImatrixEntry

    entries = dict(imatrix.entries)
    for sw in _weights(super_weights):
        if factor == 1 or sw.tensor not in entries:
            continue
        e = entries[sw.tensor]
        in_sum2 = e.in_sum2.copy()
        in_sum2[:, sw.col] *= np.float32(factor)
        entries[sw.tensor] = ImatrixEntry(in_sum2=in_sum2, counts=e.counts.copy(),
                                          in_sum=None if e.in_sum is None else e.in_sum.copy())
    return ImatrixData(entries, list(imatrix.datasets), imatrix.chunk_count, imatrix.chunk_size)


def protect_plan(rules: Sequence[Rule], imatrix: ImatrixData | None, super_weights: ImportanceMatrix | Iterable[SuperWeight],
                 section: SuperWeightsSection | ProtectSpec) -> tuple[list[Rule], ImatrixData | None]:
    """Add protection to a recipe's rules and imatrix; returns ``(rules, imatrix)``.

    The protection rules come first, so they win over the recipe's globs and
    regexes; an exact rule the user wrote for the same tensor is kept when it
    already gives at least as many bits per weight (it is never lowered).
    ``imatrix`` may be None (no boost then). With ``type: none`` or
    ``enabled: false`` both come back unchanged.
    """
    spec = section.protect if isinstance(section, SuperWeightsSection) else section
    enabled = section.enabled if isinstance(section, SuperWeightsSection) else True
    rules = list(rules)
    found = _weights(super_weights)
    if not enabled or spec.type == "none" or not found:
        return rules, imatrix
    new_rules: list[Rule] = []
    if spec.type == "raise-tensor":
        kept = _stronger_user_types(rules, found, spec.tensor_type)
        new_rules = [r for r in protection_rules(found, spec.tensor_type) if r.pattern not in kept]
    if imatrix is not None:
        imatrix = boost_imatrix(imatrix, found, spec.imatrix_boost)
    return new_rules + rules, imatrix


def _stronger_user_types(rules: Sequence[Rule], found: Sequence[SuperWeight], tensor_type: str) -> dict[str, str]:
    """Tensors (llama.cpp names) whose exact user rule (either name) gives at least ``tensor_type``'s bits."""
    want = layout(tensor_type).bits_per_weight
    user_exact = {r.pattern: r.type for r in rules if r.kind == "exact"}
    kept: dict[str, str] = {}
    for sw in found:
        mine = user_exact.get(sw.tensor) or user_exact.get(sw.hf_name)
        if mine is not None and layout(mine).bits_per_weight >= want:
            kept[sw.tensor] = mine
    return kept


def protected_types(rules: Sequence[Rule], super_weights: ImportanceMatrix | Iterable[SuperWeight],
                    section: SuperWeightsSection | ProtectSpec) -> dict[str, str]:
    """llama.cpp name -> type of every tensor raise-tensor protection pins (empty otherwise).

    That is the protection type, or the user's stronger exact rule (``rules``) that
    :func:`protect_plan` keeps. The planner treats these tensors as fixed.
    """
    spec = section.protect if isinstance(section, SuperWeightsSection) else section
    enabled = section.enabled if isinstance(section, SuperWeightsSection) else True
    found = _weights(super_weights)
    if not enabled or spec.type != "raise-tensor" or not found:
        return {}
    pinned = {sw.tensor: spec.tensor_type for sw in found}
    pinned.update(_stronger_user_types(rules, found, spec.tensor_type))
    return dict(sorted(pinned.items()))


def _lookup(weights: Mapping[str, np.ndarray], sw: SuperWeight) -> str | None:
    return sw.tensor if sw.tensor in weights else (sw.hf_name if sw.hf_name in weights else None)


def restore_super_weights(weights: Mapping[str, np.ndarray],
                          indices: ImportanceMatrix | Iterable[SuperWeight]) -> dict[str, np.ndarray]:
    """Write each super weight's exact original value back into (de)quantized ``weights``.

    ``weights`` maps llama.cpp or HF names to 2-D arrays in HF orientation
    [out, in]; touched arrays are copied, the others passed through. Super
    weights of tensors not in ``weights`` are ignored (another shard holds them).
    """
    out = dict(weights)
    copied: set[str] = set()
    for sw in _weights(indices):
        name = _lookup(out, sw)
        if name is None:
            continue
        if name not in copied:
            out[name] = np.array(out[name], copy=True)
            copied.add(name)
        out[name][sw.row, sw.col] = sw.value
    return out


def fake_quantize(name: str, w: np.ndarray, type_name: str, importance: np.ndarray | None = None,
                  super_weights: ImportanceMatrix | Iterable[SuperWeight] = ()) -> np.ndarray:
    """Quantize + dequantize one 2-D tensor (rows are GGUF rows), then restore its super weights."""
    from aqrecipe.quant import codecs

    w = np.ascontiguousarray(w, dtype=np.float32)
    deq = codecs.dequantize(codecs.quantize(w, type_name, importance), type_name, w.shape)
    mine = [replace(sw, tensor=name) for sw in _weights(super_weights) if name in (sw.tensor, sw.hf_name)]
    return restore_super_weights({name: deq}, mine)[name]
