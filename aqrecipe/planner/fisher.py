"""Per-weight KLD sensitivity: the diagonal Fisher information of the model's own predictions.

The KL divergence of the quantized model's next-token distribution from the float model's is, to
second order in the weight change ΔW, ``½ ΔWᵀ F ΔW`` with F the Fisher information of the float
model's predictive distribution (the KLD's Hessian at ΔW = 0; its gradient there is zero). With F's
diagonal, a tensor's predicted contribution at a type is ``Σ S ⊙ ΔW²`` where ``S = ½ diag(F) / tokens``
(per-token KLD, as the probes and llama-perplexity report it).

diag(F) is estimated the standard way: for each calibration window, next tokens are sampled from the
float model's own distribution, the summed log-likelihood is back-propagated, and the squared
gradient is accumulated (the window's gradient, not per token, so the tokens' interactions inside a
window are kept). One forward and one backward pass per window give S for every weight at once,
where the relative, imatrix-weighted weight error the proxy uses sees neither depth nor downstream
gain: on the float demo model, S predicts single-tensor KLD probes uncalibrated within a factor of
1.24 (rms of the log ratio 0.21; Spearman 0.985-0.994 across tensors at one type), the proxy within
a factor of 3.0 after its per-role calibration (``bench/bench_sensitivity.py``, BENCHMARKS.md).

Memory: one float32 per weight of the tensors asked for, besides the model and its gradients.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from aqrecipe.planner.kld import KldProbe

log = logging.getLogger(__name__)


def kld_sensitivity(probe: KldProbe, hf_names: Iterable[str], *, seed: int = 0) -> dict[str, np.ndarray]:
    """``S = ½ diag(F) / tokens`` (HF orientation, float32) of each parameter in ``hf_names``, from the
    probe's windows; predicted per-token KLD of a change ΔW is ``Σ S ⊙ ΔW²``."""
    import torch  # the probe has required it

    model = probe.model
    names = list(dict.fromkeys(hf_names))
    params = {n: model.get_parameter(n) for n in names}
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    ids = probe.ids
    t0 = time.perf_counter()
    try:
        for b in range(ids.shape[0]):
            for p in params.values():
                p.grad = None
            logits = model(input_ids=ids[b : b + 1], use_cache=False).logits[0].to(torch.float32)
            with torch.no_grad():
                labels = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)[:, 0]
            torch.nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
            for n, p in params.items():
                sums[n].add_(p.grad.to(torch.float32).square())
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
            p.grad = None
    scale = 0.5 / float(ids.numel())
    log.info("kld sensitivity (diagonal Fisher) of %d tensors from %d windows: %.1f s", len(names), ids.shape[0],
             time.perf_counter() - t0)
    return {n: (s * scale).numpy() for n, s in sums.items()}


def fisher_kld(sensitivity: np.ndarray, w: np.ndarray, w_hat: np.ndarray,
               row_weights: np.ndarray | None = None) -> float:
    """Predicted per-token KLD of replacing ``w`` by ``w_hat``: ``Σ S ⊙ (w - w_hat)²``; ``row_weights``:
    what each row counts for when the arrays hold a sample of a tensor's rows."""
    d = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64).reshape(np.shape(w))
    per_row = np.einsum("ij,ij->i", d * d, np.asarray(sensitivity, dtype=np.float64).reshape(d.shape))
    return float(per_row.sum() if row_weights is None else per_row @ np.asarray(row_weights, dtype=np.float64))


def fisher_energy(sensitivity: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row, ``Σ S ⊙ W²``: the Fisher estimate's row weights and the choice of exact rows use it."""
    return np.einsum("ij,ij->i", np.asarray(sensitivity, dtype=np.float64).reshape(np.shape(w)),
                     np.square(w, dtype=np.float64))
