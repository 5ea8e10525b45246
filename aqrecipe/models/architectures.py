"""Supported architectures: how a Hugging Face config maps to llama.cpp's view.

One registry, keyed by the HF ``model_type``; everything else (tensor names,
hyperparameters) is derived generically from ``gguf``'s own tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import gguf

from aqrecipe.errors import ModelError, UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """How aqrecipe handles one HF ``model_type``."""

    gguf_arch: gguf.MODEL_ARCH
    #: llama.cpp's llama graph uses interleaved (GPT-J style) rope, HF the half-split
    #: (NeoX style) one, so q/k rows are reordered on conversion.
    permute_qk: bool


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    # llama.cpp runs Mistral (dense) checkpoints with its llama graph.
    "mistral": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}

#: HF ``architectures`` class names accepted when ``model_type`` is absent.
_CLASS_TO_TYPE = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


@dataclass(frozen=True)
class ArchInfo:
    """The hyperparameters llama.cpp needs, read from config.json."""

    hf_model_type: str
    gguf_arch: gguf.MODEL_ARCH
    n_layers: int
    hidden: int
    ffn: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    rope_theta: float
    rms_eps: float
    context_length: int

    @property
    def gguf_arch_name(self) -> str:
        """llama.cpp's architecture string (``"llama"``, ``"qwen2"``)."""
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    @property
    def spec(self) -> ArchSpec:
        return ARCHITECTURES[self.hf_model_type]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gguf_arch"] = self.gguf_arch_name
        return data


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(ARCHITECTURES))


def model_type_of(config: dict[str, Any]) -> str:
    """The HF model_type of a config; UnsupportedArchitectureError if aqrecipe lacks it."""
    model_type = config.get("model_type")
    classes = config.get("architectures") or []
    classes = [str(c) for c in classes] if isinstance(classes, list) else [str(classes)]
    if model_type is None:
        model_type = next((_CLASS_TO_TYPE[c] for c in classes if c in _CLASS_TO_TYPE), None)
        shown = ", ".join(classes) or "none given"
    else:
        shown = f"model_type {model_type!r}" + (f" ({', '.join(classes)})" if classes else "")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported model architecture: {shown}",
            hint=f"aqrecipe supports model_type {', '.join(supported_model_types())} "
            f"({', '.join(sorted(_CLASS_TO_TYPE))})",
        )
    return model_type


def _require_int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(
            f"config.json: {key} is {value!r}, expected a positive integer",
            hint="config.json is incomplete or not a decoder-only language model config",
        )
    return value


def _optional_int(config: dict[str, Any], key: str, default: int) -> int:
    return default if config.get(key) is None else _require_int(config, key)


def _positive_float(key: str, value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ModelError(
            f"config.json: {key} is {value!r}, expected a positive number",
            hint="config.json is damaged or not a decoder-only language model config",
        )
    return float(value)


def _rope_theta(config: dict[str, Any]) -> float:
    # transformers 5 moves rope settings into rope_parameters; older configs keep rope_theta.
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ModelError(
            "config.json: rope_parameters / rope_scaling is not a JSON object",
            hint="config.json is damaged or not a decoder-only language model config",
        )
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise UnsupportedArchitectureError(
            f"rope scaling type {rope_type!r} is not supported yet",
            hint="use a checkpoint without rope scaling (rope_type 'default')",
        )
    return _positive_float("rope_theta", config.get("rope_theta") or params.get("rope_theta"), 10000.0)


def arch_info_from_config(config: dict[str, Any], *, tied_embeddings: bool) -> ArchInfo:
    """Build ArchInfo from a parsed config.json (``tied_embeddings`` comes from the tensors)."""
    model_type = model_type_of(config)
    hidden = _require_int(config, "hidden_size")
    n_head = _require_int(config, "num_attention_heads")
    head_dim = _optional_int(config, "head_dim", hidden // n_head or 1)
    return ArchInfo(
        hf_model_type=model_type,
        gguf_arch=ARCHITECTURES[model_type].gguf_arch,
        n_layers=_require_int(config, "num_hidden_layers"),
        hidden=hidden,
        ffn=_require_int(config, "intermediate_size"),
        n_head=n_head,
        n_head_kv=_optional_int(config, "num_key_value_heads", n_head),
        head_dim=head_dim,
        vocab=_require_int(config, "vocab_size"),
        tied_embeddings=tied_embeddings,
        rope_theta=_rope_theta(config),
        rms_eps=_positive_float("rms_norm_eps", config.get("rms_norm_eps"), 1e-6),
        context_length=_optional_int(config, "max_position_embeddings", 4096),
    )
