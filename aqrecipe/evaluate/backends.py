"""The logits-backend protocol and the factory that opens a model by path.

A backend turns text into token ids and a window of token ids into next-token
logits. Two implementations exist: :class:`~aqrecipe.evaluate.llamacpp.LlamaCppBackend`
(GGUF files, through llama-cpp-python) and :class:`~aqrecipe.evaluate.torch_backend.TorchBackend`
(Hugging Face folders, through transformers on the CPU). Neither library is
imported until a backend is opened.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from aqrecipe.errors import EvalError

__all__ = ["LogitsBackend", "open_backend", "DEMO"]

DEMO = "demo"


@runtime_checkable
class LogitsBackend(Protocol):
    """What the evaluator needs from a model.

    ``bos_token_id`` is the token the model's tokenizer puts at the start of a
    text (None when it adds none); the evaluator puts it at the start of every
    window, as llama.cpp's perplexity tool does.
    """

    name: str
    vocab_size: int
    bos_token_id: int | None

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        ...

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """float32 ``[len(tokens), vocab_size]``: row ``i`` holds the logits given ``tokens[: i + 1]``.

        Each call is an independent window (no state is kept between calls).
        """
        ...


def _demo_folder() -> Path:
    try:
        from aqrecipe.models import materialize_demo
    except ImportError as exc:
        raise EvalError(
            "the demo model is not available in this build",
            hint="pass a GGUF file or a Hugging Face folder instead of 'demo'",
        ) from exc
    result = materialize_demo()
    return Path(getattr(result, "path", result))


def open_backend(
    ref: str | os.PathLike[str] | LogitsBackend,
    *,
    n_ctx: int = 512,
    n_threads: int | None = None,
) -> LogitsBackend:
    """Open a model for evaluation.

    ``ref`` is a backend (returned as is), ``"demo"`` (the demo model's HF
    folder), a ``.gguf`` file (llama.cpp) or a folder holding ``config.json``
    (transformers, float32 on the CPU). ``n_ctx`` is the context the llama.cpp
    backend allocates; it must be at least the evaluation window.
    """
    if isinstance(ref, LogitsBackend):
        return ref
    if isinstance(ref, str) and ref == DEMO:
        path = _demo_folder()
    else:
        path = Path(ref)
    if path.is_file() and path.suffix.lower() == ".gguf":
        from aqrecipe.evaluate.llamacpp import LlamaCppBackend

        return LlamaCppBackend(path, n_ctx=n_ctx, n_threads=n_threads)
    if path.is_dir() and (path / "config.json").is_file():
        from aqrecipe.evaluate.torch_backend import TorchBackend

        return TorchBackend(path, n_threads=n_threads)
    if not path.exists():
        raise EvalError(
            f"model {str(path)!r} does not exist",
            hint="pass a .gguf file, a Hugging Face folder (with config.json) or 'demo'",
        )
    raise EvalError(
        f"cannot evaluate {str(path)!r}: it is neither a .gguf file nor a folder with config.json",
        hint="pass a .gguf file, a Hugging Face folder (with config.json) or 'demo'",
    )
