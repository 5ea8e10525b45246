"""Hugging Face folders through transformers (CPU): the unquantized reference."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aqrecipe.errors import EvalError
from aqrecipe.optional import require_torch

__all__ = ["TorchBackend"]


class TorchBackend:
    """Next-token logits from ``AutoModelForCausalLM`` on the CPU (``dtype`` default float32).

    ``dtype`` may be a torch dtype or its name (``"float32"``, ``"bfloat16"``).
    ``n_threads``, when given, sets torch's intra-op thread count (process-wide).
    """

    def __init__(
        self,
        hf_folder: str | os.PathLike[str],
        dtype: Any = "float32",
        n_threads: int | None = None,
    ) -> None:
        torch, transformers = require_torch("evaluating a Hugging Face folder")
        AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
        self.path = Path(hf_folder)
        self.name = str(self.path)
        if n_threads:
            torch.set_num_threads(n_threads)
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            self._model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch_dtype, use_safetensors=True)
        except (OSError, ValueError, KeyError) as exc:
            raise EvalError(
                f"transformers could not load {self.name}: {exc}",
                hint="the folder needs config.json, the weights (*.safetensors) and tokenizer files",
            ) from exc
        self._model.eval()
        head = self._model.get_output_embeddings()
        self.vocab_size = int(head.out_features if head is not None else self._model.config.vocab_size)
        self.bos_token_id = self._detect_bos()

    def _detect_bos(self) -> int | None:
        bos = self._tokenizer.bos_token_id
        if bos is None:
            return None
        probe = self._tokenizer("a", add_special_tokens=True)["input_ids"]
        return int(bos) if probe and probe[0] == bos else None

    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        import torch  # loaded by __init__

        ids = torch.tensor([list(tokens)], dtype=torch.long)
        with torch.inference_mode():
            out = self._model(input_ids=ids, use_cache=False).logits[0]
        return out.to(torch.float32).numpy()

    def parameter_names(self) -> frozenset[str]:
        """The names :meth:`load_weights` accepts (the model's parameters and persistent buffers)."""
        return frozenset(self._model.state_dict())

    def load_weights(self, weights: Iterable[tuple[str, np.ndarray]], *, name: str | None = None) -> int:
        """Overwrite parameters in place with ``(HF name, array)`` pairs (simulated quantization).

        Every name must be a parameter or buffer of the model; returns how many were loaded.
        ``name`` renames the backend (reports show it).
        """
        import torch

        state = self._model.state_dict()
        n = 0
        with torch.no_grad():
            for key, value in weights:
                if key not in state:
                    raise EvalError(f"{self.name} has no parameter {key!r}",
                                    hint="the weights must come from the model this backend loaded")
                target = state[key]
                if tuple(target.shape) != tuple(value.shape):
                    raise EvalError(f"{key}: shape {tuple(value.shape)} does not match the model's {tuple(target.shape)}",
                                    hint="the weights must come from the model this backend loaded")
                target.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(target.dtype))
                n += 1
        if name is not None:
            self.name = name
        return n
