"""GGUF models through llama-cpp-python: the real consumer of the files we write."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aqrecipe.errors import DependencyError, EvalError

__all__ = ["LlamaCppBackend"]

SEED = 1234  # fixed; evaluation does not sample, but the context wants a seed


class LlamaCppBackend:
    """Next-token logits from a GGUF file via ``llama_cpp.Llama`` (CPU, ``logits_all``).

    Each :meth:`logits` call resets the context and evaluates one window with the
    low-level ``eval``; ``n_ctx`` (and the batch size) bound the window length.
    """

    def __init__(self, gguf_path: str | os.PathLike[str], n_ctx: int = 512, n_threads: int | None = None):
        try:
            import llama_cpp
        except ImportError as exc:
            raise DependencyError(
                "evaluating a GGUF file needs llama-cpp-python, which is not installed",
                hint="pip install 'aqrecipe[eval]' (or pip install llama-cpp-python)",
            ) from exc
        self.path = Path(gguf_path)
        self.name = str(self.path)
        self.n_ctx = n_ctx
        from aqrecipe.gguf_read import check_gguf

        check_gguf(self.path)  # llama.cpp would only say "failed to load": name the damage instead
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=True,
                seed=SEED,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EvalError(
                f"llama.cpp could not load {self.name}: {exc}",
                hint="check that the file is a complete GGUF model (aqrecipe inspect FILE)",
            ) from exc
        self.vocab_size = int(self._llm.n_vocab())
        self.bos_token_id = self._detect_bos()

    def _detect_bos(self) -> int | None:
        """The BOS id when the model's tokenizer adds one (per the GGUF's add_bos flag)."""
        bos = int(self._llm.token_bos())
        probe = self._llm.tokenize(b"a", add_bos=True, special=False)
        return bos if bos >= 0 and probe and probe[0] == bos else None

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        n = len(tokens)
        if n > self.n_ctx:
            raise EvalError(
                f"window of {n} tokens exceeds the llama.cpp context of {self.n_ctx}",
                hint="open the backend with a larger n_ctx",
            )
        self._llm.reset()
        self._llm.eval(list(tokens))
        return np.array(self._llm.scores[:n], dtype=np.float32, copy=True)

    def close(self) -> None:
        """Free the llama.cpp model and context now rather than at garbage collection."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None and hasattr(llm, "close"):
            llm.close()
