"""ArchInfo: the few hyperparameters quantization decisions read, taken from llama.cpp's metadata.

Nothing here is per architecture: every field is read from the ``<arch>.*`` keys that
llama.cpp's converter writes (or a GGUF file holds), so a family llama.cpp runs is a family
aqrecipe plans for. The mixtures read ``n_layers`` and the GQA ratio; memory estimates read
the widths.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import gguf

from aqrecipe.errors import ModelError


@dataclass(frozen=True)
class ArchInfo:
    """llama.cpp's view of a model's shape (``gguf_arch_name`` is e.g. ``"llama"``, ``"gemma3"``)."""

    gguf_arch_name: str
    n_layers: int
    hidden: int
    ffn: int  # the widest feed-forward layer (some architectures vary it per layer)
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab: int
    tied_embeddings: bool  # no output.weight: llama.cpp reuses token_embd as the output head
    context_length: int
    hf_model_type: str | None = None  # config.json's model_type; None for GGUF input
    n_expert: int = 0  # routed experts per MoE layer (llama.cpp's expert_count); 0 for dense models

    @property
    def gqa_ratio(self) -> int:
        """Query heads per key/value head (llama.cpp's mixtures bump attn_v when it is >= 4)."""
        return max(1, self.n_head // max(1, self.n_head_kv))

    @property
    def is_moe(self) -> bool:
        """A mixture of experts: llama.cpp stores each layer's routed experts as one 3-D tensor."""
        return self.n_expert > 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metadata_value(metadata: Mapping[str, gguf.GGUFValue], key: str) -> Any:
    """A metadata entry's plain value (None when absent)."""
    entry = metadata.get(key)
    return None if entry is None else entry.value


def arch_info_from_metadata(
    metadata: Mapping[str, gguf.GGUFValue],
    *,
    vocab_rows: int | None,
    tied_embeddings: bool,
    hf_model_type: str | None = None,
) -> ArchInfo:
    """Read ArchInfo from llama.cpp's keys; ``vocab_rows`` is token_embd's row count when known."""
    arch = metadata_value(metadata, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(
            "the model's metadata has no general.architecture",
            hint="a GGUF model file (or llama.cpp's conversion of the folder) always names its architecture",
        )

    def number(name: str, *, default: int | None = None) -> int:
        value = metadata_value(metadata, f"{arch}.{name}")
        if isinstance(value, (list, tuple)):  # per-layer values (e.g. head counts of hybrid models)
            value = max((int(v) for v in value), default=None)
        if value is None:
            if default is None:
                raise ModelError(
                    f"the model's metadata has no {arch}.{name}",
                    hint="the GGUF file is incomplete or was written by a tool llama.cpp does not read",
                )
            return default
        return int(value)

    n_head = number("attention.head_count", default=1)
    hidden = number("embedding_length")
    vocab = vocab_rows if vocab_rows is not None else number("vocab_size", default=0)
    if not vocab:
        tokens = metadata_value(metadata, "tokenizer.ggml.tokens")
        vocab = len(tokens) if isinstance(tokens, (list, tuple)) else 0
    return ArchInfo(
        gguf_arch_name=arch,
        n_layers=number("block_count"),
        hidden=hidden,
        ffn=number("feed_forward_length", default=0),
        n_head=n_head,
        n_head_kv=number("attention.head_count_kv", default=n_head),
        head_dim=number("attention.key_length", default=max(1, hidden // max(1, n_head))),
        vocab=vocab,
        tied_embeddings=tied_embeddings,
        context_length=number("context_length", default=0),
        hf_model_type=hf_model_type,
        n_expert=number("expert_count", default=0),
    )
