"""Contradictions and absurd values in a Hugging Face config.json, refused before anything is converted.

llama.cpp's converter and transformers each resolve some contradictions their own way (a string
``"false"`` is truthy; of ``rope_parameters`` and ``rope_scaling`` one silently wins); aqrecipe
refuses them instead, naming the key, so the quantized file is built from the config the user meant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aqrecipe.errors import ModelError

#: config keys that are counts or sizes: positive integers far below 2**31 in every real model
_COUNT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
_BOOL_KEYS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window")
_MAX_COUNT = 2**31 - 1


def _fail(path: Path, what: str, hint: str) -> ModelError:
    return ModelError(f"{path / 'config.json'}: {what}", hint=hint)


def check_config(folder: Path, config: dict[str, Any]) -> None:
    """Refuse mistyped flags, impossible counts and disagreeing rope settings in ``config``."""
    sections = [config] + [v for k, v in config.items() if k == "text_config" and isinstance(v, dict)]
    for section in sections:
        for key in _BOOL_KEYS:
            value = section.get(key)
            if value is not None and not isinstance(value, bool):
                raise _fail(folder, f"{key} is {value!r} ({type(value).__name__}), not true or false",
                            f"write {key}: true or false without quotes")
        for key in _COUNT_KEYS:
            value = section.get(key)
            if value is None or (key == "sliding_window" and value == 0 and section.get("use_sliding_window") is False):
                continue  # transformers 5 writes sliding_window 0 for "off" (Qwen2-MoE's config)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _MAX_COUNT:
                raise _fail(folder, f"{key} is {str(value)[:40]}, not a positive integer below 2**31",
                            "restore config.json from the model repository")
        _check_rope(folder, section)


def _check_rope(folder: Path, config: dict[str, Any]) -> None:
    """``rope_parameters`` (transformers 5) and ``rope_scaling`` (older) must not say different things."""
    params, scaling = config.get("rope_parameters"), config.get("rope_scaling")
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        return
    for key in sorted(set(params) & set(scaling) | {"rope_type"}):
        a = params.get(key, params.get("type") if key == "rope_type" else None)
        b = scaling.get(key, scaling.get("type") if key == "rope_type" else None)
        if key == "rope_type":
            a, b = a or "default", b or "default"
        if a != b:
            raise _fail(folder, f"rope_parameters and rope_scaling disagree on {key} ({a!r} vs {b!r})",
                        "keep one of them (transformers 5 reads rope_parameters, older versions rope_scaling)")
