"""Builders for tiny random Hugging Face models and tokenizers (test-only)."""

from __future__ import annotations

import json
from pathlib import Path


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "In 1969, 3 astronauts flew 384400 km to the Moon!",
    "def add(a, b):\n    return a + b\n",
    "It's a small world; we'll see what they've done.",
] * 20

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


#: the demo tokenizer's size: tiny models use it because llama.cpp's converter accepts only BPE
#: tokenizers it recognises (it hashes their tokenization of a fixed text), not freshly trained ones
VOCAB = 49152


def build_tokenizer(folder: Path) -> None:
    """Copy the demo model's tokenizer (SmolLM2's byte-level BPE, llama.cpp pre-tokenizer 'smollm')."""
    import shutil

    from aqrecipe.models.demo import materialize_demo

    demo = materialize_demo()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (demo / name).is_file():
            shutil.copy2(demo / name, folder / name)


def build_sentencepiece(folder: Path, vocab_size: int = 512, *, user_symbols: tuple[str, ...] = ()) -> Path:
    """Train a tiny SentencePiece model offline into ``folder/tokenizer.model`` (deterministic)."""
    import io

    import sentencepiece as spm

    text = CORPUS + [line for line in (Path(__file__).parent.parent / "README.md").read_text().splitlines() if line]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=buffer, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=list(user_symbols), minloglevel=2, shuffle_input_sentence=False,
    )
    path = folder / "tokenizer.model"
    path.write_bytes(buffer.getvalue())
    return path


def build_tiny_model(folder: Path, model_type: str, *, seed: int = 0, dtype: str = "float32") -> Path:
    """A 2-layer random model of ``model_type`` ('llama' or 'qwen2') saved as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    if model_type == "llama":
        config = LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False)
    else:
        config = Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # non-trivial norms so a mix-up of norm tensors shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.05 * torch.randn_like(param))
    model = model.to(getattr(torch, dtype))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer(folder)
    if model_type == "qwen2":
        # transformers 5 tokenizes qwen2 folders with its Qwen2Tokenizer, whose pre-tokenizer on the demo's
        # vocabulary llama.cpp's converter does not recognise; the converter prefers a SentencePiece model.
        build_sentencepiece(folder)
    return folder
