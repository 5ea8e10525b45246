"""Forward hooks on the ``nn.Linear`` modules of one stage, feeding the observers."""

from __future__ import annotations

import time
import weakref
from typing import Any, Sequence

import numpy as np

from aqrecipe.calibration.observers import InputStatsObserver, LinearObserver


class LayerHooks:
    """Forward hooks on every ``nn.Linear`` of one stage, feeding the observers."""

    def __init__(self, stage: int, named_linears: Sequence[tuple[tuple[str, ...], Any]],
                 observers: Sequence[LinearObserver], stats: InputStatsObserver | None) -> None:
        """``named_linears``: each module with the GGUF tensors its weight feeds (one, or several
        for a weight the converter splits: they share the module's input, hence its statistics)."""
        self.stage = stage
        self.observers = observers
        self.stats = stats
        self.handles = []
        # weak references: holding a batch's inputs alive would keep ~50 MB per batch from
        # torch's allocator; a dead reference returns None, so it never matches a new tensor
        self._batch_inputs: dict[str, weakref.ref] = {}
        self._first_batch = True
        self._alias: dict[str, str] = {}
        self.seconds = 0.0  # time spent in the observers (the statistics' cost)
        for gguf_names, module in named_linears:
            self.handles.append(module.register_forward_hook(self._make_hook(tuple(gguf_names))))

    def next_batch(self) -> None:
        if self._batch_inputs:
            self._first_batch = False
        self._batch_inputs.clear()

    def _make_hook(self, gguf_names: tuple[str, ...]):
        def hook(module, args, output):
            for name in gguf_names:  # the second and later see the same input object: aliased
                self.record(name, args[0], output)

        return hook

    def record(self, gguf_name: str, x_t, y_t) -> None:
        t0 = time.perf_counter()
        try:
            self._record(gguf_name, x_t, y_t)
        finally:
            self.seconds += time.perf_counter() - t0

    def _record(self, gguf_name: str, x_t, y_t) -> None:
        # identity of the very tensor object passed in: q/k/v (gate/up) receive the same one
        same = next((n for n, ref in self._batch_inputs.items() if ref() is x_t), None)
        if self._first_batch and same is not None and self.stats is not None:
            self._alias[gguf_name] = same
            self.stats.alias(gguf_name, same)
        elif self._alias.get(gguf_name) not in (None, same):
            raise RuntimeError(f"{gguf_name}: linears that shared an input stopped sharing it")
        self._batch_inputs[gguf_name] = weakref.ref(x_t)
        if same is not None and self.stats is not None and not any(
                o.wants(gguf_name) for o in self.observers if o is not self.stats):
            self.stats.observe(self.stage, gguf_name, None, None)  # type: ignore[arg-type]
            return  # shared statistics: nothing to compute
        x = as_numpy(x_t.detach())
        y = None
        for obs in self.observers:
            if not obs.wants(gguf_name):
                continue
            if obs.needs_output and y is None and y_t is not None:
                y = as_numpy(y_t.detach())
            obs.observe(self.stage, gguf_name, x, y if obs.needs_output else None)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def as_numpy(t) -> np.ndarray:
    import torch

    flat = t.reshape(-1, t.shape[-1])
    if flat.dtype != torch.float32:
        flat = flat.float()
    return np.ascontiguousarray(flat.cpu().numpy())
