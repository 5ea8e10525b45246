"""The Hugging Face side of a model source, for every torch stage.

Calibration (imatrix, SmoothQuant, super weights), the planner's KL probe and simulated evaluation
run the model's own transformers code, so they need the HF folder: a GGUF input has none, and each
stage refuses it here with one message naming the stage. Nothing here knows a model family: the
model class comes from ``config.json`` through transformers' Auto classes, and the decoder is found
by the two attributes every decoder-only family in transformers has (``model.embed_tokens`` and
``model.layers``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aqrecipe.errors import EvalError, UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch

    from aqrecipe.models.protocol import ModelRef, WeightSource

log = logging.getLogger(__name__)

#: What a GGUF input can do instead, per stage (the error's hint); stages not named get the generic one.
_INSTEAD = {
    "imatrix calibration": "pass --imatrix FILE made by llama-imatrix, or give the model as its Hugging Face folder",
}
_GENERIC_INSTEAD = "give the model as its Hugging Face folder (config.json + safetensors); packing a GGUF still works"


def require_hf_folder(source: WeightSource, stage: str) -> Path:
    """The HF folder the torch stage ``stage`` loads; UnsupportedArchitectureError for GGUF input."""
    folder = source.hf_folder
    if folder is None:
        raise UnsupportedArchitectureError(
            f"{stage} needs the Hugging Face folder; GGUF input ({source.path}) has no transformers model to run",
            hint=_INSTEAD.get(stage, _GENERIC_INSTEAD),
        )
    return Path(folder)


def hf_config(source: WeightSource, stage: str) -> Any:
    """``transformers.AutoConfig`` of the source's HF folder."""
    import transformers

    return transformers.AutoConfig.from_pretrained(str(require_hf_folder(source, stage)))


def decoder_of(model: Any, stage: str) -> Any:
    """``model.model``, the decoder, once it is known to have ``embed_tokens`` and ``layers``."""
    base = getattr(model, "model", None)
    missing = [a for a in ("embed_tokens", "layers") if base is None or not hasattr(base, a)]
    if missing:
        raise UnsupportedArchitectureError(
            f"{stage} cannot run {type(model).__name__} layer by layer: its decoder has no "
            f"{' or '.join('model.' + a for a in missing)}",
            hint="the torch stages run decoder-only models whose transformers class keeps its layers in "
            "model.layers; packing without them (no imatrix, or --imatrix FILE) still works",
        )
    return base


def empty_model(source: WeightSource, stage: str, *, attn_implementation: str | None = None) -> Any:
    """The HF causal LM with every parameter on the meta device and every buffer computed for real.

    Buffers (rotary frequencies, Gemma's embedding scale) are what the config determines, so they
    are made by the modeling code itself; parameters are loaded later, one module at a time.
    ``attn_implementation`` falls back to transformers' default when the class does not offer it
    (Gemma 2's softcapped attention has no sdpa path).
    """
    import transformers

    from aqrecipe.optional import require

    accelerate = require("accelerate", stage)
    config = hf_config(source, stage)
    with accelerate.init_empty_weights(include_buffers=False):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        except ValueError as exc:
            if attn_implementation is None:
                raise
            log.info("%s: %s; using transformers' default attention", stage, str(exc).split(".")[0])
            # a fresh config: the refused attempt already wrote its choice into the first one
            model = transformers.AutoModelForCausalLM.from_config(hf_config(source, stage))
    model.eval()
    return model


def load_float_model(source: WeightSource, stage: str, dtype: Any = "float32") -> Any:
    """The whole HF model (safetensors only), in eval mode on the CPU."""
    import torch
    import transformers

    folder = require_hf_folder(source, stage)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise EvalError(f"transformers could not load {folder} for {stage}: {exc}",
                        hint="the folder needs config.json and the weights (*.safetensors)") from exc
    model.eval()
    return model


def hf_tensor_shapes(source: WeightSource) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF checkpoint with its shape (HF orientation), in file order."""
    from aqrecipe.models.files import find_weight_files
    from aqrecipe.models.safetensors_io import read_header

    folder = require_hf_folder(source, "reading the Hugging Face tensors")
    return {raw.name: tuple(raw.shape) for file in find_weight_files(folder) for raw in read_header(file)}


def gguf_names_of_module(source: WeightSource, module_name: str) -> tuple[str, ...]:
    """The GGUF tensors an HF module's weight feeds (empty: the converter drops it)."""
    return tuple(source.gguf_names_of(f"{module_name}.weight"))


def linear_modules(module: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """``(relative name, module)`` of every ``nn.Linear`` under ``module``, in module order."""
    import torch

    return [(name, mod) for name, mod in module.named_modules() if isinstance(mod, torch.nn.Linear)]


def as_source(model_ref: ModelRef, base_dir: Path | None = None) -> WeightSource:
    """``model_ref`` itself when it is an opened source, else :func:`aqrecipe.models.open_model` of it."""
    import os

    if isinstance(model_ref, (str, os.PathLike)):
        from aqrecipe.models import open_model

        return open_model(model_ref, base_dir)
    return model_ref
