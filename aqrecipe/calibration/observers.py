"""Per-linear observers: the hook API of the sequential runner.

The runner calls every observer for every ``nn.Linear`` it runs, with the
linear's input (and output, when the observer asks for it) as float32
``[tokens, features]`` numpy blocks. Observers that want to survive a resumed
run return their per-layer state from :meth:`LinearObserver.layer_state`; the
runner stores it in that layer's checkpoint and hands it back through
:meth:`LinearObserver.restore_layer_state`.

Built in: :class:`InputStatsObserver` (imatrix statistics for every linear) and
:class:`DownProjRanges` (max |input| / max |output| per channel of each
``ffn_down``, for the super-weight detector). SmoothQuant and others add their
own by subclassing :class:`LinearObserver`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from aqrecipe.calibration.stats import Backend, ChannelStats, update_absmax
from aqrecipe.models.tensor_names import layer_of

class LinearObserver:
    """Base class. ``key`` names the observer's arrays in checkpoints (must be unique)."""

    key = "observer"
    needs_output = False
    #: True: :meth:`observe_final` receives the decoder's final normed hidden states (the output
    #: head's input), also for tied embeddings, where no ``output.weight`` is observed
    wants_final = False

    def bind(self, input_stats: InputStatsObserver | None) -> None:
        """Called by the runner before the pass with its input-statistics observer (None without one)."""

    def wants(self, gguf_name: str) -> bool:
        """Whether :meth:`observe` should be called for this linear."""
        return True

    def observe(self, layer: int, gguf_name: str, x: np.ndarray, y: np.ndarray | None) -> None:
        """``x``: the input ``[tokens, in]``; ``y``: the output ``[tokens, out]`` or None."""

    def observe_final(self, x: np.ndarray) -> None:
        """``x``: one batch of final normed hidden states ``[tokens, hidden]`` (see :attr:`wants_final`)."""

    def layer_state(self, layer: int) -> Mapping[str, np.ndarray]:
        """Arrays to checkpoint after ``layer`` finished (keys without '/' issues are fine)."""
        return {}

    def restore_layer_state(self, layer: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Reload what :meth:`layer_state` returned for a layer finished by an earlier run."""


class InputStatsObserver(LinearObserver):
    """Per-input-channel sum x^2, sum x, max |x|, count of every linear (imatrix data).

    Linears that read the same input tensor (q/k/v, gate/up) share one
    :class:`ChannelStats`; the runner tells us through :meth:`alias`.
    """

    key = "stats"

    def __init__(self, backend: Backend = "numba") -> None:
        self.backend = backend
        self.stats: dict[str, ChannelStats] = {}
        self._aliases: dict[str, str] = {}
        self._by_stage: dict[int, list[str]] = {}

    def alias(self, gguf_name: str, same_input_as: str) -> None:
        self._aliases[gguf_name] = same_input_as

    def shared_input_of(self, gguf_name: str) -> str | None:
        """The linear whose input ``gguf_name`` reads too (k and v: q), or None."""
        return self._aliases.get(gguf_name)

    def aliases_of(self, names: object) -> dict[str, str]:
        """Every linear that shares the input of one of ``names``, with that name."""
        return {a: s for a, s in self._aliases.items() if s in names}  # type: ignore[operator]

    def observe(self, layer: int, gguf_name: str, x: np.ndarray, y: np.ndarray | None) -> None:
        names = self._by_stage.setdefault(layer, [])
        if gguf_name not in names:
            names.append(gguf_name)
        source = self._aliases.get(gguf_name)
        if source is not None:
            self.stats[gguf_name] = self.stats[source]
            return
        st = self.stats.get(gguf_name)
        if st is None:
            st = self.stats[gguf_name] = ChannelStats(x.shape[1])
        st.update(x, self.backend)

    def layer_state(self, layer: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name in self._by_stage.get(layer, []):
            out.update(self.stats[name].to_arrays(prefix=f"{name}:"))
        return out

    def restore_layer_state(self, layer: int, arrays: Mapping[str, np.ndarray]) -> None:
        names = list(dict.fromkeys(k.rsplit(":", 1)[0] for k in arrays))
        self._by_stage[layer] = names
        for name in names:
            self.stats[name] = ChannelStats.from_arrays(arrays, prefix=f"{name}:")


class DownProjRanges(LinearObserver):
    """max |input| per input channel and max |output| per output channel of ffn_down.

    Given the run's :class:`InputStatsObserver` as ``input_stats`` (which keeps
    max |x| of every linear's input already), the inputs are not scanned twice:
    ``max_in`` is read from it.
    """

    key = "down_proj"
    needs_output = True

    def __init__(self, backend: Backend = "numba", input_stats: InputStatsObserver | None = None) -> None:
        self.backend = backend
        self.input_stats = input_stats
        self._max_in: dict[int, np.ndarray] = {}
        self.max_out: dict[int, np.ndarray] = {}

    @property
    def max_in(self) -> dict[int, np.ndarray]:
        if self.input_stats is None:
            return self._max_in
        stats = self.input_stats.stats
        return {layer: stats[f"blk.{layer}.ffn_down.weight"].absmax for layer in self.max_out}

    def wants(self, gguf_name: str) -> bool:
        return gguf_name.endswith(".ffn_down.weight") and layer_of(gguf_name) is not None

    def observe(self, layer: int, gguf_name: str, x: np.ndarray, y: np.ndarray | None) -> None:
        assert y is not None
        if layer not in self.max_out:
            self.max_out[layer] = np.zeros(y.shape[1], dtype=np.float32)
        update_absmax(self.max_out[layer], y, self.backend)
        if self.input_stats is None:
            if layer not in self._max_in:
                self._max_in[layer] = np.zeros(x.shape[1], dtype=np.float32)
            update_absmax(self._max_in[layer], x, self.backend)

    def layer_state(self, layer: int) -> dict[str, np.ndarray]:
        if layer not in self.max_out:
            return {}
        state = {"max_out": self.max_out[layer]}
        if self.input_stats is None:
            state["max_in"] = self._max_in[layer]
        return state

    def restore_layer_state(self, layer: int, arrays: Mapping[str, np.ndarray]) -> None:
        if "max_out" in arrays:
            self.max_out[layer] = np.array(arrays["max_out"], dtype=np.float32)
        if "max_in" in arrays and self.input_stats is None:
            self._max_in[layer] = np.array(arrays["max_in"], dtype=np.float32)
