"""``evaluate()``: perplexity, KL divergence and top-1 agreement on held-out text.

The text (by default the built-in Wikipedia evaluation split, articles joined by
blank lines) is tokenized once, with the reference's tokenizer when there is a
reference, so both models see identical token ids. It is cut into ``chunks``
consecutive windows of ``context`` tokens from its start; when the tokenizer
adds BOS, the stream starts with it and the first token of each window is
replaced by it (llama.cpp's perplexity tool does the same, so the windows match
its own). Each window is
evaluated by both models in turn and scored at once, so at most one window of
logits per model is held in memory. As in llama.cpp's perplexity tool, only the
second half of each window is scored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np

from aqrecipe.formats import corpus
from aqrecipe.errors import CalibrationDataError, EvalError
from aqrecipe.evaluate.backends import LogitsBackend, open_backend
from aqrecipe.evaluate.metrics import MetricsAccumulator
from aqrecipe.evaluate.report import QualityReport

__all__ = ["evaluate", "eval_windows", "BUILTIN_TEXT"]

BUILTIN_TEXT = "builtin:enwiki-eval"
ModelRef = str | os.PathLike[str] | LogitsBackend


def _resolve_text(text: str | os.PathLike[str] | None, raw_text: str | None) -> tuple[str, str]:
    if raw_text is not None:
        return raw_text, "<text>"
    if text is None:
        articles = corpus.evaluation_articles()
        return corpus.join_articles(articles), f"{BUILTIN_TEXT} ({len(articles)} articles)"
    return corpus.load_text_file(text), str(text)


def eval_windows(
    token_ids: list[int], chunks: int, context: int, bos_token_id: int | None
) -> Iterator[np.ndarray]:
    """Yield ``chunks`` consecutive windows of ``context`` tokens, BOS first when given.

    As in llama.cpp's perplexity tool, the stream itself starts with BOS (when
    the tokenizer adds one) and the first token of every window is set to BOS.
    """
    if bos_token_id is not None:
        token_ids = [bos_token_id, *token_ids]
    needed = chunks * context
    if len(token_ids) < needed:
        fit = len(token_ids) // context
        raise CalibrationDataError(
            f"the evaluation text has {len(token_ids)} tokens, but {chunks} chunks of "
            f"{context} tokens need {needed}",
            hint=f"use a longer text, or at most {fit} chunks of {context} tokens",
        )
    ids = np.asarray(token_ids[:needed], dtype=np.int64).reshape(chunks, context)
    for row in ids:
        window = row.copy()
        if bos_token_id is not None:
            window[0] = bos_token_id
        yield window


def _check_logits(backend: LogitsBackend, logits: np.ndarray, n: int) -> np.ndarray:
    if logits.shape != (n, backend.vocab_size):
        raise EvalError(
            f"{backend.name} returned logits of shape {logits.shape}, expected {(n, backend.vocab_size)}",
            hint="this is a backend bug; report it with the model file",
        )
    return logits


def _open(stack: ExitStack, ref: ModelRef, context: int, n_threads: int | None) -> LogitsBackend:
    backend = open_backend(ref, n_ctx=context, n_threads=n_threads)
    if backend is not ref and hasattr(backend, "close"):
        stack.callback(backend.close)  # free what we opened, leave the caller's backends alone
    return backend


def evaluate(
    model: ModelRef,
    reference: ModelRef | None = None,
    text: str | os.PathLike[str] | None = None,
    chunks: int = 16,
    context: int = 512,
    n_threads: int | None = None,
    *,
    raw_text: str | None = None,
) -> QualityReport:
    """Measure ``model`` on held-out text, against ``reference`` when given.

    ``model`` and ``reference`` are backends or anything :func:`open_backend`
    accepts (a .gguf file, an HF folder, ``"demo"``). ``text`` is a UTF-8 text
    file (None: the built-in evaluation split); ``raw_text`` passes the text
    itself. Perplexity is computed over the second half of each window only
    (llama.cpp's convention), so ``n_tokens = chunks * (context - context // 2 - 1)``.
    """
    if chunks < 1 or context < 4:
        raise EvalError(
            f"need chunks >= 1 and context >= 4 (got chunks={chunks}, context={context})",
            hint="typical values: chunks 16, context 512",
        )
    t_start = time.perf_counter()
    timing: dict[str, float] = {"model_s": 0.0, "reference_s": 0.0}
    body, source = _resolve_text(text, raw_text)
    with ExitStack() as stack:
        q_backend = _open(stack, model, context, n_threads)
        ref_backend = _open(stack, reference, context, n_threads) if reference is not None else None
        timing["load_s"] = time.perf_counter() - t_start
        if ref_backend is not None and ref_backend.vocab_size != q_backend.vocab_size:
            raise EvalError(
                f"vocabularies differ: {q_backend.name} has {q_backend.vocab_size} tokens, "
                f"the reference {ref_backend.name} has {ref_backend.vocab_size}",
                hint="compare a quantized model only with the model it was made from",
            )
        tokenizer = ref_backend or q_backend
        t0 = time.perf_counter()
        token_ids = tokenizer.tokenize(body)
        timing["tokenize_s"] = time.perf_counter() - t0

        acc = MetricsAccumulator()
        for window in eval_windows(token_ids, chunks, context, tokenizer.bos_token_id):
            t0 = time.perf_counter()
            q_logits = _check_logits(q_backend, q_backend.logits(window), context)
            t1 = time.perf_counter()
            ref_logits = None
            if ref_backend is not None:
                ref_logits = _check_logits(ref_backend, ref_backend.logits(window), context)
            timing["model_s"] += t1 - t0
            timing["reference_s"] += time.perf_counter() - t1
            acc.add_window(window, q_logits, ref_logits)
            del q_logits, ref_logits

        stats = acc.kld_stats()
        timing["total_s"] = time.perf_counter() - t_start
        return QualityReport(
            model=q_backend.name,
            reference=ref_backend.name if ref_backend is not None else None,
            text_source=source,
            n_tokens=acc.n_tokens,
            chunks=chunks,
            context=context,
            perplexity_quantized=acc.perplexity(),
            perplexity_original=acc.reference_perplexity(),
            kld_mean=stats[0] if stats else None,
            kld_p99=stats[1] if stats else None,
            kld_max=stats[2] if stats else None,
            top1_agreement=acc.top1_agreement(),
            timing={k: round(v, 3) for k, v in sorted(timing.items())},
        )
