"""Measured sensitivity: KL divergence of the final logits when one tensor is quantized.

One reference forward pass over the calibration windows gives the reference
log-probabilities (and the output head's input statistics, which weigh the
proxy of a tied ``token_embd``). Each (tensor, type) then costs one forward
pass with only that tensor replaced by its round trip. torch is imported here
only, lazily.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

log = logging.getLogger(__name__)


class KldProbe:
    """A float32 transformers model with swappable weights and the reference log-probs."""

    def __init__(self, source: WeightSource, windows: np.ndarray, *, n_threads: int | None = None) -> None:
        from aqrecipe.optional import require_torch

        torch, transformers = require_torch("the planner's KL-divergence measurement")
        if n_threads:
            torch.set_num_threads(n_threads)
        self._torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(source.path), dtype=torch.float32, use_safetensors=True)
        self.model.eval()
        self.ids = torch.as_tensor(np.asarray(windows, dtype=np.int64))
        head = self.model.get_output_embeddings()
        sums: list[Any] = []

        def grab(_module: Any, args: tuple, _out: Any) -> None:
            x = args[0].detach().to(torch.float64)
            sums.append(((x * x).reshape(-1, x.shape[-1]).sum(0), x.shape[0] * x.shape[1]))

        handle = head.register_forward_hook(grab)
        try:
            self.ref_logp = self._logp()
        finally:
            handle.remove()
        total = sum(s for s, _ in sums)
        count = sum(n for _, n in sums)
        #: mean x^2 per input column of the output head (final normed hidden state)
        self.output_importance = (total / count).to(torch.float32).numpy()

    def _logp(self) -> Any:
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(input_ids=self.ids, use_cache=False).logits
        return torch.log_softmax(logits.to(torch.float32), dim=-1)

    def kld(self, hf_name: str, w_hat: np.ndarray) -> float:
        """Mean per-token KL(reference || model with ``hf_name`` := ``w_hat``), in nats."""
        torch = self._torch
        param = self.model.get_parameter(hf_name)
        original = param.data.clone()
        try:
            param.data.copy_(torch.from_numpy(np.ascontiguousarray(w_hat, dtype=np.float32)).reshape(param.shape))
            logp = self._logp()
        finally:
            param.data.copy_(original)
        kl = (self.ref_logp.exp() * (self.ref_logp - logp)).sum(-1)
        return float(kl.mean())


def calibration_token_windows(source: WeightSource, samples: int, seq_len: int, seed: int = 0) -> np.ndarray:
    """``[samples, seq_len]`` windows from the built-in calibration split (disjoint from evaluation)."""
    from aqrecipe.calibration.data import CalibrationSpec, calibration_windows, load_tokenizer

    spec = CalibrationSpec(samples=samples, seq_len=seq_len, seed=seed, enforce_sample_range=False)
    return calibration_windows(spec, load_tokenizer(str(source.tokenizer_dir or source.path)))
