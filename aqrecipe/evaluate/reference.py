"""The unquantized reference for quality numbers: an F16 GGUF of the source model.

Evaluating the quantized file and the reference in the same engine (llama.cpp)
means KL divergence measures quantization alone, as llama.cpp's own
``llama-perplexity --kl-divergence`` does. The reference is built once per
model and cached under :func:`aqrecipe.models.files.values_key` (structure and sampled weight bytes:
a base model and its fine-tune share a fingerprint, not a reference). A GGUF given as the model is
its own reference: it is what the user would run unquantized (and for a requantized input, the file
the new one replaces).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

log = logging.getLogger(__name__)


def reference_gguf(model: str | Path | WeightSource) -> Path:
    """Path of the unquantized reference GGUF of ``model``: the input GGUF itself, or an F16 GGUF of an HF
    folder written on first use."""
    from aqrecipe.output.plan_gguf import write_plan_gguf
    from aqrecipe.models import open_model
    from aqrecipe.models.demo import cache_root
    from aqrecipe.plan import PlanSpec, compile_plan

    source = open_model(model) if isinstance(model, (str, Path)) else model
    if source.hf_folder is None:
        return Path(source.path)
    model_ref = source.path
    from aqrecipe.models.files import values_key

    dest = cache_root() / "reference" / f"{values_key(source)[:16]}-F16.gguf"
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("writing the F16 reference GGUF for %s -> %s", model_ref, dest)
    plan = compile_plan(source, PlanSpec(mixture="F16"), model_ref=str(source.path))
    write_plan_gguf(plan, dest)
    return dest
