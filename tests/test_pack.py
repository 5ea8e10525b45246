"""Packing one plan entry: bytes, ternary scale option, F32 passthrough."""

from __future__ import annotations

import numpy as np

from aqrecipe.quant import codecs
from aqrecipe.output.pack import pack_entry
from aqrecipe.plan import PlanEntry


class OneTensor:
    def __init__(self, w: np.ndarray) -> None:
        self.w = w

    def read_for_gguf(self, name: str) -> np.ndarray:
        return self.w


def _entry(type_name: str, shape: tuple[int, int], n_bytes: int) -> PlanEntry:
    return PlanEntry("blk.0.ffn_down.weight", "x", shape, "F32", type_name, type_name, "test", shape[0] * shape[1], n_bytes)


def test_ternary_scale_option_reaches_the_codec() -> None:
    w = np.random.default_rng(0).normal(size=(4, 256)).astype(np.float32)
    absmax = pack_entry(OneTensor(w), _entry("TQ1_0", w.shape, 4 * 54))
    absmean = pack_entry(OneTensor(w), _entry("TQ1_0", w.shape, 4 * 54), ternary_absmean=True)
    assert absmax.tobytes() == codecs.quantize(w, "TQ1_0").tobytes()
    assert absmean.tobytes() == codecs.quantize(w, "TQ1_0", ternary_absmean=True).tobytes()
    assert absmax.tobytes() != absmean.tobytes()


def test_f32_is_written_as_is() -> None:
    w = np.arange(8, dtype=np.float32).reshape(1, 8)
    assert pack_entry(OneTensor(w), _entry("F32", w.shape, 32)).tobytes() == w.tobytes()
