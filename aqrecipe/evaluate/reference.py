"""The unquantized reference for quality numbers: an F16 GGUF of the source model.

Evaluating the quantized file and the reference in the same engine (llama.cpp)
means KL divergence measures quantization alone, as llama.cpp's own
``llama-perplexity --kl-divergence`` does. The reference is built once per
model fingerprint and cached.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def reference_gguf(model_ref: str | Path) -> Path:
    """Path of the F16 GGUF of ``model_ref``, written on first use."""
    from aqrecipe.output.plan_gguf import write_plan_gguf
    from aqrecipe.models import open_model
    from aqrecipe.models.demo import cache_root
    from aqrecipe.plan import PlanSpec, compile_plan

    source = open_model(model_ref)
    dest = cache_root() / "reference" / f"{source.fingerprint()[:16]}-F16.gguf"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("writing the F16 reference GGUF for %s -> %s", model_ref, dest)
    plan = compile_plan(source, PlanSpec(mixture="F16"), model_ref=str(source.path))
    write_plan_gguf(plan, dest)
    return dest
