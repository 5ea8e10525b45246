"""Quality metrics over next-token logits, in float64, one window at a time.

Conventions follow llama.cpp's ``perplexity`` tool: each window of ``n`` tokens
is evaluated as a whole, but only its second half is scored — the logits at
positions ``n // 2 .. n - 2`` predicting tokens ``n // 2 + 1 .. n - 1`` — so
every scored token has at least ``n // 2`` tokens of context. The KL
divergence and top-1 agreement are measured on the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "log_softmax",
    "scored_positions",
    "token_nll",
    "token_kld",
    "top1_matches",
    "MetricsAccumulator",
]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (stable: the row maximum is subtracted first)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def scored_positions(window_len: int) -> slice:
    """The logit rows scored in a window: its second half, as llama.cpp's perplexity does."""
    if window_len < 2:
        raise ValueError(f"a window needs at least 2 tokens, got {window_len}")
    return slice(window_len // 2, window_len - 1)


def token_nll(logprobs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target token: ``-logprobs[i, targets[i]]``."""
    return -logprobs[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)]


def token_kld(ref_logprobs: np.ndarray, q_logprobs: np.ndarray) -> np.ndarray:
    """Per-row KL(P_ref || P_q) = sum_v p_ref(v) (log p_ref(v) - log p_q(v)), clipped at 0."""
    kld = np.sum(np.exp(ref_logprobs) * (ref_logprobs - q_logprobs), axis=-1)
    return np.maximum(kld, 0.0)  # rounding can give -1e-17 for identical rows


def top1_matches(ref_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """Per-row boolean: do both models rank the same token first?"""
    return np.argmax(ref_logits, axis=-1) == np.argmax(q_logits, axis=-1)


@dataclass
class MetricsAccumulator:
    """Running sums over windows. Keeps one float per scored token for KLD percentiles."""

    nll_sum: float = 0.0
    ref_nll_sum: float = 0.0
    n_tokens: int = 0
    top1_hits: int = 0
    klds: list[np.ndarray] = field(default_factory=list)

    def add_window(
        self, tokens: np.ndarray, logits: np.ndarray, ref_logits: np.ndarray | None = None
    ) -> None:
        """Score one window: ``logits[i]`` (and ``ref_logits[i]``) predict ``tokens[i + 1]``."""
        rows = scored_positions(len(tokens))
        targets = np.asarray(tokens)[rows.start + 1 : rows.stop + 1]
        q_lp = log_softmax(logits[rows])
        self.nll_sum += float(token_nll(q_lp, targets).sum())
        self.n_tokens += len(targets)
        if ref_logits is None:
            return
        ref_lp = log_softmax(ref_logits[rows])
        self.ref_nll_sum += float(token_nll(ref_lp, targets).sum())
        self.klds.append(token_kld(ref_lp, q_lp))
        self.top1_hits += int(top1_matches(ref_logits[rows], logits[rows]).sum())

    @property
    def has_reference(self) -> bool:
        return bool(self.klds)

    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / self.n_tokens))

    def reference_perplexity(self) -> float | None:
        return float(np.exp(self.ref_nll_sum / self.n_tokens)) if self.has_reference else None

    def kld_stats(self) -> tuple[float, float, float] | None:
        """(mean, 99th percentile, max) of the per-token KL divergence."""
        if not self.has_reference:
            return None
        kld = np.concatenate(self.klds)
        return float(kld.mean()), float(np.percentile(kld, 99)), float(kld.max())

    def top1_agreement(self) -> float | None:
        return self.top1_hits / self.n_tokens if self.has_reference else None
