"""What each decoder layer is called with, taken from the model's own forward.

Running a model layer by layer needs, per layer, the arguments its decoder passes besides the
hidden states: rotary embeddings (Gemma 3 has one pair per layer type), the causal mask (Gemma 2
and 3 alternate sliding-window and global masks, Mistral slides everywhere), position ids, cache
positions and whatever else a family adds. Rather than rebuilding any of that per family, the
decoder's forward runs once with every layer swapped for a :class:`_Recorder`, which notes its
call and hands the hidden states back unchanged; the last one stops the forward, so the final
norm and the head never run. Nothing but the decoder's own preamble is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aqrecipe.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LayerCall:
    """One decoder layer's call, less the hidden states: ``layer(h, *args, **kwargs)``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _Stop(Exception):
    """Raised by the last recorder: the rest of the forward (final norm, head) is not needed."""


def _recorder_class():
    import torch

    class _Recorder(torch.nn.Module):
        """Stands in for decoder layer ``index``: records its call, returns the hidden states unchanged."""

        def __init__(self, index: int, sink: dict[int, tuple[Any, LayerCall]], last: bool) -> None:
            super().__init__()
            self.index, self.sink, self.last = index, sink, last

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            self.sink[self.index] = (hidden, LayerCall(rest, dict(kwargs)))
            if self.last:
                raise _Stop
            return hidden

    return _Recorder


def capture_layer_calls(base: torch.nn.Module, **forward_kwargs: Any) -> tuple[torch.Tensor, list[LayerCall]]:
    """Run ``base`` (the decoder, ``model.model``) with recording stubs in place of its layers.

    ``forward_kwargs`` go to the decoder's forward (``input_ids=...`` or ``inputs_embeds=...``).
    Returns the hidden states layer 0 receives and every layer's call. The layers are put back
    whatever happens.
    """
    layers = base.layers
    n = len(layers)
    if n == 0:
        raise ValueError("the decoder has no layers")
    recorder = _recorder_class()
    sink: dict[int, tuple[Any, LayerCall]] = {}
    originals = list(layers)
    try:
        for i in range(n):
            layers[i] = recorder(i, sink, last=i == n - 1)
        try:
            base(**forward_kwargs, use_cache=False)
        except _Stop:
            pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    missing = [i for i in range(n) if i not in sink]
    if missing:
        raise UnsupportedArchitectureError(
            f"{type(base).__name__}'s forward does not call decoder layer {missing[0]} (of {n}) in order",
            hint="the torch stages run decoders that call model.layers one after the other")
    return sink[0][0], [sink[i][1] for i in range(n)]
