"""In-memory torch models: loading, a logits backend for ``aqrecipe.evaluate``, losses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource


#: The stage named when the model has no HF folder (GGUF input).
SMOOTHQUANT = "SmoothQuant"


def load_float_model(source: WeightSource) -> Any:
    """The HF model of ``source`` in float32 on the CPU, in eval mode."""
    from aqrecipe.calibration.hf_model import load_float_model as load

    return load(source, SMOOTHQUANT)


def load_tokenizer(source: WeightSource) -> Any:
    from transformers import AutoTokenizer

    from aqrecipe.calibration.hf_model import require_hf_folder

    tok = AutoTokenizer.from_pretrained(str(source.tokenizer_dir or require_hf_folder(source, SMOOTHQUANT)))
    tok.model_max_length = 1 << 40
    return tok


class ModuleBackend:
    """A :class:`~aqrecipe.evaluate.LogitsBackend` over a torch model held in memory."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self.name = name
        head = model.get_output_embeddings()
        self.vocab_size = int(head.out_features if head is not None else model.config.vocab_size)
        bos = tokenizer.bos_token_id
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.bos_token_id = int(bos) if bos is not None and probe and probe[0] == bos else None

    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        return window_logits(self._model, np.asarray(tokens, dtype=np.int64)[None, :])[0]


def window_logits(model: Any, windows: np.ndarray) -> np.ndarray:
    """float32 logits ``[batch, seq, vocab]`` of token windows ``[batch, seq]``."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(np.asarray(windows, dtype=np.int64)), use_cache=False)
    return out.logits.to(torch.float32).numpy()


def mean_nll(model: Any, windows: np.ndarray, batch: int = 4) -> float:
    """Mean next-token negative log-likelihood over all positions of ``windows`` (nats)."""
    import torch

    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        ids = torch.from_numpy(np.asarray(windows[start:start + batch], dtype=np.int64))
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=False).logits.to(torch.float64)
        lp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        total += float(nll.sum())
        count += int(nll.numel())
    return total / max(count, 1)


def max_relative_logit_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |a|`` (a is the reference)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a64 - b64).max() / max(np.abs(a64).max(), 1e-30))
