"""Tokenizer metadata (``tokenizer.ggml.*``) from Hugging Face tokenizer files.

Byte-level BPE tokenizers (GPT-2 style: SmolLM, Qwen2, Llama 3) become
llama.cpp's ``gpt2`` model. The pre-tokenizer name is identified from the
structure of tokenizer.json's pre_tokenizer; an unknown one falls back to
``default`` with a warning, because llama.cpp would then split text differently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from aqrecipe.errors import ModelError
from aqrecipe.models.pretokenizers import detect_pre_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vocab:
    """The token table llama.cpp needs, padded to the model's vocab size."""

    model: str
    pre: str
    tokens: tuple[str, ...]
    token_types: tuple[int, ...]


def read_tokenizer_json(tokenizer_dir: Path) -> dict[str, Any]:
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(
            f"{tokenizer_dir} has no tokenizer.json",
            hint="aqrecipe writes GGUF tokenizers from tokenizer.json; save the tokenizer with "
            "transformers (AutoTokenizer.from_pretrained(...).save_pretrained(folder))",
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _is_byte_level(data: dict[str, Any]) -> bool:
    text = json.dumps([data.get("pre_tokenizer"), data.get("decoder")])
    return '"ByteLevel"' in text


def build_vocab(data: dict[str, Any], n_vocab: int, source: Path) -> Vocab:
    """Tokens and token types of a byte-level BPE tokenizer.json, padded to ``n_vocab``."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _is_byte_level(data):
        raise ModelError(
            f"{source}: tokenizer is {model.get('type')} without byte-level encoding; "
            "only byte-level BPE tokenizers (GPT-2 style) are supported for now",
            hint="use a model with a byte-level BPE tokenizer (SmolLM2, Qwen2, Llama 3)",
        )
    by_id: dict[int, tuple[str, int]] = {
        int(i): (tok, gguf.TokenType.NORMAL) for tok, i in model.get("vocab", {}).items()
    }
    for added in data.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= n_vocab:
        raise ModelError(
            f"{source}: tokenizer has token id {max(by_id)} but the model's vocab_size is {n_vocab}",
            hint="the tokenizer does not belong to this model",
        )
    tokens, types = [], []
    for i in range(n_vocab):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    pre = detect_pre_tokenizer(data)
    if pre is None:
        log.warning(
            "%s: unrecognised pre-tokenizer %s; writing tokenizer.ggml.pre = 'default', "
            "llama.cpp may split text differently from transformers",
            source,
            json.dumps(data.get("pre_tokenizer"))[:200],
        )
        pre = "default"
    return Vocab("gpt2", pre, tuple(tokens), tuple(types))


def _add_special_flags(tokenizer_dir: Path, special_ids: dict[str, int]) -> dict[str, bool]:
    """Whether encoding adds BOS / EOS: tokenizer_config.json first, else observed behaviour."""
    flags: dict[str, bool] = {}
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    for typ in ("bos", "eos"):
        if isinstance(config.get(f"add_{typ}_token"), bool):
            flags[typ] = config[f"add_{typ}_token"]
    if len(flags) == 2:
        return flags
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers ships with transformers
        return {"bos": False, "eos": False, **flags}
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    plain = tok.encode("Hello", add_special_tokens=False).ids
    full = tok.encode("Hello", add_special_tokens=True).ids
    observed = {
        "bos": len(full) > len(plain) and full[0] == special_ids.get("bos", -1),
        "eos": len(full) > len(plain) and full[-1] == special_ids.get("eos", -1),
    }
    return {**observed, **flags}


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer_dir: Path, n_vocab: int) -> Vocab:
    """Write every ``tokenizer.ggml.*`` key (and the chat template) for ``tokenizer_dir``."""
    data = read_tokenizer_json(tokenizer_dir)
    vocab = build_vocab(data, n_vocab, tokenizer_dir)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_types(list(vocab.token_types))
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=n_vocab)
    flags = _add_special_flags(tokenizer_dir, special.special_token_ids)
    special.add_special_token.pop("bos", None)
    special.add_special_token.pop("eos", None)
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_bos_token(flags["bos"])
    writer.add_add_eos_token(flags["eos"])
    return vocab
