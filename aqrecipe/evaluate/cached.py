"""A backend wrapper that remembers each window's logits.

Comparing several quantized files against one reference re-runs the reference
on the same windows every time; wrapping it in :class:`CachedBackend` computes
each reference window once. Memory: windows x context x vocab float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aqrecipe.evaluate.backends import LogitsBackend


class CachedBackend:
    """Delegates to ``inner`` and caches ``logits`` by the exact token ids."""

    def __init__(self, inner: LogitsBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.vocab_size = inner.vocab_size
        self.bos_token_id = inner.bos_token_id
        self._cache: dict[bytes, np.ndarray] = {}

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        key = np.asarray(tokens, dtype=np.int64).tobytes()
        if key not in self._cache:
            self._cache[key] = self.inner.logits(tokens)
        return self._cache[key]

    def close(self) -> None:
        self._cache.clear()
        if hasattr(self.inner, "close"):
            self.inner.close()
