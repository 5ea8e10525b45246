"""Packing: one plan entry's weights -> the bytes written into the GGUF file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aqrecipe.quant import codecs
from aqrecipe.errors import CodecError, HessianError, NonFiniteWeightError, ShapeMismatchError
from aqrecipe.models.nonfinite import non_finite_error

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource
    from aqrecipe.plan import PlanEntry


def pack_entry(
    source: WeightSource, entry: PlanEntry, importance: np.ndarray | None = None, *, ternary_absmean: bool = False,
    hessian: np.ndarray | None = None,
) -> np.ndarray:
    """Read one tensor, apply llama.cpp's layout transforms and encode it.

    Returns a uint8 array of exactly ``entry.n_bytes`` bytes, shaped (rows, row bytes).
    ``importance`` is the per-column weight (an imatrix row) for types that use it; for merged
    experts (a 3-D entry) it may hold one row per expert, and each expert is encoded with its own;
    ``ternary_absmean`` picks the BitNet-style block scale for TQ1_0 / TQ2_0. An entry whose
    rounding is gptq is encoded with :func:`aqrecipe.quant.rounding.quantize_gptq` against
    ``hessian`` (its input's XᵀX), which it then requires.
    """
    weights = np.asarray(source.read_for_gguf(entry.gguf_name), dtype=np.float32)
    row_len = int(entry.shape[-1]) if len(entry.shape) else 0
    if row_len <= 0 or weights.size % row_len:  # a stale or edited plan: reshape would fail obscurely
        raise ShapeMismatchError(
            f"tensor {entry.hf_name} ({entry.gguf_name}): its {weights.size} values do not form rows of "
            f"{row_len} (the plan's shape {tuple(entry.shape)})",
            hint="the plan was built for another checkpoint: build the plan again from this model",
        )
    rows = weights.reshape(-1, row_len)
    if entry.type == "F32":  # stored as is: the codecs' NaN/Inf check does not run
        if not np.isfinite(rows).all():
            raise non_finite_error(source, entry.gguf_name)
        return np.ascontiguousarray(rows).view(np.uint8)
    try:
        per_expert = importance is not None and np.ndim(importance) == 2 and len(entry.shape) == 3
        if entry.rounding is not None:
            packed = _pack_gptq(entry, rows, importance, hessian, ternary_absmean)
        elif per_expert:
            experts = rows.reshape(int(entry.shape[0]), -1, row_len)
            packed = np.concatenate([codecs.quantize(w, entry.type, imp, ternary_absmean=ternary_absmean)
                                     for w, imp in zip(experts, expert_rows(importance, entry.shape))])
        else:
            packed = codecs.quantize(rows, entry.type, importance, ternary_absmean=ternary_absmean)
    except NonFiniteWeightError as exc:
        # The codec counts rows after llama.cpp's transforms; the user needs the checkpoint's own.
        raise non_finite_error(source, entry.gguf_name, fallback=exc) from None
    except CodecError as exc:  # e.g. a weight beyond F16's range: say which tensor
        raise type(exc)(f"tensor {entry.hf_name} ({entry.gguf_name}): {exc.message}", hint=exc.hint,
                        code=exc.code) from None
    if packed.nbytes != entry.n_bytes:  # the plan and the codec disagree: a bug, not a user error
        raise AssertionError(f"{entry.gguf_name}: packed {packed.nbytes} bytes, plan says {entry.n_bytes}")
    return packed


def expert_rows(importance: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-expert importance ``[n_expert, row_len]`` for a merged-expert tensor of ``shape``."""
    imp = np.asarray(importance, dtype=np.float32)
    n_expert, row_len = int(shape[0]), int(shape[-1])
    if imp.shape != (n_expert, row_len):
        raise ShapeMismatchError(
            f"importance of shape {imp.shape} for merged experts of shape {tuple(shape)}: expected one row of "
            f"{row_len} per expert ({n_expert})",
            hint="use an imatrix computed for this model (aqrecipe imatrix compute MODEL, or llama-imatrix)",
        )
    return imp


def _pack_gptq(entry: PlanEntry, rows: np.ndarray, importance: np.ndarray | None, hessian: np.ndarray | None,
               ternary_absmean: bool) -> np.ndarray:
    """GPTQ rounding of one entry (its ``rounding`` options) against its input's Hessian."""
    from aqrecipe.quant.rounding import quantize_gptq
    from aqrecipe.recipe.rounding import Rounding

    if hessian is None:
        raise HessianError(
            f"{entry.gguf_name} has rounding gptq but no Hessian was collected for its input",
            hint="gptq needs the calibration pass (apply collects it when the plan has gptq entries); "
            "set rounding: {type: rtn} for tensors that are not linear layers",
        )
    r = Rounding.from_dict(entry.rounding)
    return quantize_gptq(rows, entry.type, hessian, damp=r.damp, block_size=r.block_size, act_order=r.act_order,
                         importance=importance, ternary_absmean=ternary_absmean)

