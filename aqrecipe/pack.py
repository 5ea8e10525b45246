"""Packing: one plan entry's weights -> the bytes written into the GGUF file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import codecs

if TYPE_CHECKING:
    from .models import ModelSource
    from .plan import PlanEntry


def pack_entry(
    source: ModelSource, entry: PlanEntry, importance: np.ndarray | None = None, *, ternary_absmean: bool = False
) -> np.ndarray:
    """Read one tensor (memory-mapped), apply llama.cpp's layout transforms and encode it.

    Returns a uint8 array of exactly ``entry.n_bytes`` bytes, shaped (rows, row bytes).
    ``importance`` is the per-column weight (an imatrix row) for types that use it;
    ``ternary_absmean`` picks the BitNet-style block scale for TQ1_0 / TQ2_0.
    """
    weights = np.asarray(source.read_for_gguf(entry.hf_name), dtype=np.float32)
    rows = weights.reshape(-1, entry.shape[-1])
    if entry.type == "F32":
        return np.ascontiguousarray(rows).view(np.uint8)
    packed = codecs.quantize(rows, entry.type, importance, ternary_absmean=ternary_absmean)
    if packed.nbytes != entry.n_bytes:  # the plan and the codec disagree: a bug, not a user error
        raise AssertionError(f"{entry.gguf_name}: packed {packed.nbytes} bytes, plan says {entry.n_bytes}")
    return packed
