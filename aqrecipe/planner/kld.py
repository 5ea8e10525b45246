"""Measured sensitivity: KL divergence of the final logits when one tensor is quantized.

One reference forward pass over the calibration windows gives the reference
log-probabilities (and the output head's input statistics, which weigh the
proxy of a tied ``token_embd``). Each (tensor, type) then costs one forward
pass with only that tensor replaced by its round trip, from the tensor's own
decoder layer on: the layers before it compute what they computed in the
reference pass, so their outputs, kept from it, are replayed instead (the
model's own forward still runs its preamble, final norm and head). torch is
imported here only, lazily.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

log = logging.getLogger(__name__)


#: The stage named when the model cannot be run in torch (GGUF input).
KLD_STAGE = "the planner's KL-divergence measurement"


class KldProbe:
    """A float32 transformers model with swappable weights and the reference log-probs.

    Weights are swapped in HF orientation: a GGUF tensor's round trip is computed on the HF
    tensor it comes from, row by row (see :func:`hf_weight_of`).
    """

    def __init__(self, source: WeightSource, windows: np.ndarray, *, n_threads: int | None = None) -> None:
        from aqrecipe.calibration.hf_model import load_float_model
        from aqrecipe.optional import require_torch

        torch, _ = require_torch(KLD_STAGE)
        if n_threads:
            torch.set_num_threads(n_threads)
        self._torch = torch
        self.model = load_float_model(source, KLD_STAGE)
        self.ids = torch.as_tensor(np.asarray(windows, dtype=np.int64))
        head = self.model.get_output_embeddings()
        sums: list[Any] = []

        def grab(_module: Any, args: tuple, _out: Any) -> None:
            x = args[0].detach().to(torch.float64)
            sums.append(((x * x).reshape(-1, x.shape[-1]).sum(0), x.shape[0] * x.shape[1]))

        self._layers = _decoder_layers(self.model)
        #: decoder layer index of each of its parameters (the others feed every layer: no replay)
        self._layer_of = {id(p): i for i, layer in enumerate(self._layers) for p in layer.parameters()}
        self._layer_outputs: list[Any] = [None] * len(self._layers)

        def keep(index: int) -> Any:
            def hook(_module: Any, _args: tuple, out: Any) -> None:
                self._layer_outputs[index] = out
            return hook

        handles = [head.register_forward_hook(grab)]
        handles += [layer.register_forward_hook(keep(i)) for i, layer in enumerate(self._layers)]
        try:
            self.ref_logp = self._logp()
        finally:
            for h in handles:
                h.remove()
        total = sum(s for s, _ in sums)
        count = sum(n for _, n in sums)
        #: mean x^2 per input column of the output head (final normed hidden state)
        self.output_importance = (total / count).to(torch.float32).numpy()

    def _logp(self, first_layer: int = 0) -> Any:
        """Log-probs of the model as it is; decoder layers before ``first_layer`` replay the reference
        pass's outputs (right only while none of their weights differs from the reference)."""
        torch = self._torch
        originals = list(self._layers[:first_layer])
        replay = _replay_class()
        try:
            for i in range(first_layer):
                self._layers[i] = replay(originals[i], self._layer_outputs[i])
            with torch.inference_mode():
                logits = self.model(input_ids=self.ids, use_cache=False).logits
        finally:
            for i, layer in enumerate(originals):
                self._layers[i] = layer
        return torch.log_softmax(logits.to(torch.float32), dim=-1)

    def set_weight(self, hf_name: str, w_hat: np.ndarray) -> None:
        """Replace the model's ``hf_name`` by ``w_hat`` (until set again)."""
        param = self.model.get_parameter(hf_name)
        param.data.copy_(self._torch.from_numpy(np.ascontiguousarray(w_hat, dtype=np.float32)).reshape(param.shape))

    def current_kld(self) -> float:
        """Mean per-token KL(reference || the model with the weights set so far), in nats."""
        return self._kld_of(self._logp())

    def _kld_of(self, logp: Any) -> float:
        kl = (self.ref_logp.exp() * (self.ref_logp - logp)).sum(-1)
        return float(kl.mean())

    def kld(self, hf_name: str, w_hat: np.ndarray) -> float:
        """Mean per-token KL(reference || model with only ``hf_name`` := ``w_hat``), in nats."""
        param = self.model.get_parameter(hf_name)
        original = param.data.clone()
        try:
            self.set_weight(hf_name, w_hat)
            return self._kld_of(self._logp(first_layer=self._layer_of.get(id(param), 0)))
        finally:
            param.data.copy_(original)


def _decoder_layers(model: Any) -> Any:
    """``model.model.layers`` (the decoder layers, in call order), or an empty list when the model
    keeps them elsewhere (then every probe runs the whole model)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers if layers is not None else []


@functools.cache
def _replay_class() -> type:
    import torch

    class Replay(torch.nn.Module):
        """Stands in for a decoder layer whose weights are the reference's: returns what the layer
        returned in the reference pass. Other attributes (a decoder may read e.g. the layer's
        ``attention_type`` to pick its mask) are the layer's."""

        def __init__(self, layer: Any, output: Any) -> None:
            super().__init__()
            object.__setattr__(self, "_layer", layer)  # not a submodule: its parameters stay out
            self.output = output

        def forward(self, *_args: Any, **_kwargs: Any) -> Any:
            return self.output

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(object.__getattribute__(self, "_layer"), name)

    return Replay


def probe_can_swap(source: WeightSource, gguf_name: str) -> bool:
    """Whether a KLD probe can swap the tensor in the torch model: a 2-D GGUF tensor that is the only one
    made from its HF tensor. Splits (MLA's kv_b_proj) share their HF tensor; merged experts are slices
    of fused 3-D parameters in transformers."""
    info = source.tensor(gguf_name)
    return len(info.shape) == 2 and tuple(source.gguf_names_of(info.hf_name)) == (gguf_name,)


def hf_weight_of(source: WeightSource, gguf_name: str) -> tuple[str, np.ndarray]:
    """The HF tensor a GGUF tensor comes from, as ``(name, [rows, row_len] float32)``.

    Every ggml type quantizes a row on its own (the imatrix weighs columns), and the converter's
    transforms of the families the torch stages run are row permutations and concatenations, so
    quantizing the HF rows with the GGUF tensor's type gives each row the values the GGUF holds.
    A tensor without such a view (see :func:`probe_can_swap`) is refused.
    """
    from aqrecipe.errors import UnsupportedArchitectureError

    hf_name = source.tensor(gguf_name).hf_name
    if not probe_can_swap(source, gguf_name):
        raise UnsupportedArchitectureError(
            f"{gguf_name} is not one HF weight of its own ({hf_name} feeds several GGUF tensors, or the tensor "
            "merges routed experts): its KL divergence cannot be measured by swapping the HF weight",
            hint="use measurement type fisher or proxy for this model")
    w = np.asarray(source.read(hf_name), dtype=np.float32)
    return hf_name, w.reshape(-1, w.shape[-1])


def calibration_token_windows(source: WeightSource, samples: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """``[samples, seq_len]`` windows from the built-in calibration split (disjoint from evaluation)."""
    from aqrecipe.calibration.data import CalibrationSpec, calibration_windows, load_tokenizer
    from aqrecipe.calibration.hf_model import require_hf_folder

    require_hf_folder(source, KLD_STAGE)
    spec = CalibrationSpec(samples=samples, seq_len=seq_len, seed=seed, enforce_sample_range=False)
    return calibration_windows(spec, load_tokenizer(str(source.tokenizer_dir or source.path)))
