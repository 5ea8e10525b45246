"""Coherence validation after ultra-low-bit quantization: detect a collapsed model.

A model "collapses" when it still loads but no longer models language: its
perplexity explodes relative to the original, it agrees with the original's
next-token choice only rarely, its logits go non-finite, or its greedy
generations fall into repetition loops. Each check has a threshold the recipe
can set; the verdict lists every failed check with its number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aqrecipe.recipe.sections import CoherenceSpec  # the recipe's ``coherence`` section

#: Fixed prompts: varied topics so one lucky continuation cannot hide a collapse.
PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "Photosynthesis is the process by which",
    "In 1969, the first humans to walk on the Moon",
    "A good way to learn a new programming language is",
)

GENERATION_CONTEXT = 256  # tokens: a prompt plus ``new_tokens`` greedy ones

#: Types at or under ~2.6 bits per weight: a plan using any of them is validated by default.
ULTRA_LOW_TYPES = frozenset({"Q2_K", "IQ2_XXS", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"})


@dataclass(frozen=True)
class CoherenceResult:
    """The verdict: passed or not, each failed check, and the numbers behind it."""

    passed: bool
    failures: tuple[str, ...]
    ppl_ratio: float
    top1_agreement: float
    loop_share: float
    non_finite_logits: bool
    generations: dict[str, str] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)  # the evaluation behind the PPL / top-1 checks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def repetition_loop(tokens: list[int], max_period: int = 8, min_repeats: int = 3) -> bool:
    """True when the sequence ends in a block of up to ``max_period`` tokens repeated ``min_repeats`` times,
    or when fewer than a quarter of its tokens are distinct (a degenerate generation)."""
    n = len(tokens)
    for period in range(1, max_period + 1):
        span = period * min_repeats
        if span > n:
            break
        tail = tokens[n - span :]
        if all(tail[i] == tail[i % period] for i in range(span)):
            return True
    return n >= 16 and len(set(tokens)) < n / 4


def check_coherence(model: Path, reference: Path, spec: CoherenceSpec = CoherenceSpec()) -> CoherenceResult:
    """Run the quality numbers and the generation checks of ``model`` against ``reference``."""
    from aqrecipe.evaluate import evaluate
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    report = evaluate(model, reference=reference, chunks=spec.chunks, context=spec.context)
    ppl_ratio = report.perplexity_quantized / report.perplexity_original
    generations, loops, non_finite = {}, 0, not math.isfinite(report.perplexity_quantized)
    backend = LlamaCppBackend(model, n_ctx=GENERATION_CONTEXT)
    try:
        for prompt in PROMPTS:
            out = backend.generate(prompt, spec.new_tokens)
            non_finite |= out["non_finite"]
            loops += repetition_loop(out["tokens"])
            generations[prompt] = out["text"]
    finally:
        backend.close()
    loop_share = loops / len(PROMPTS)
    failures = []
    if non_finite:
        failures.append("non-finite logits")
    if not ppl_ratio <= spec.max_ppl_ratio:
        failures.append(f"perplexity ratio {ppl_ratio:.2f} > {spec.max_ppl_ratio}")
    if report.top1_agreement < spec.min_top1:
        failures.append(f"top-1 agreement {report.top1_agreement:.1%} < {spec.min_top1:.0%}")
    if loop_share > spec.max_loop_share:
        failures.append(f"{loops}/{len(PROMPTS)} greedy generations loop (limit {spec.max_loop_share:.0%})")
    return CoherenceResult(
        passed=not failures,
        failures=tuple(failures),
        ppl_ratio=ppl_ratio,
        top1_agreement=report.top1_agreement,
        loop_share=loop_share,
        non_finite_logits=non_finite,
        generations=generations,
        quality=report.to_dict(),
    )


def is_ultra_low(plan: Any) -> bool:
    """Whether any tensor of the plan asks for an ultra-low-bit type (even where rows fall back)."""
    return any(e.type in ULTRA_LOW_TYPES or e.requested_type in ULTRA_LOW_TYPES for e in plan.entries)
