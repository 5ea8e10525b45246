"""Tiny random models of every dense family aqrecipe supports, built from each family's real config.

Each family starts from the ``config.json`` its reference checkpoint publishes on the Hugging Face
Hub (rope settings, sliding windows, softcapping, norm eps, biases, tied embeddings, head_dim ...),
kept key for key, and only the sizes are shrunk: few layers, hidden 256 (so every row is a whole
number of 256-value K-quant blocks), and 16-token sliding windows for Gemma 2 and 3 (so windows
of 64 tokens exercise local attention). The folder is written the way a Hub download looks: that
``config.json`` (not the one transformers would re-serialise), safetensors weights from
``save_pretrained(safe_serialization=True)`` and the tokenizer files the family ships.

Tokenizers: llama.cpp's converter recognises a BPE tokenizer by hashing how it splits a fixed
text, so a freshly trained BPE is refused. Llama 3 and Qwen3 get the demo model's tokenizer
(SmolLM2, vocab 49152); Qwen2 gets the real Qwen2 one (vocab 151936), because transformers forces
its own Qwen2Tokenizer on qwen2 folders (see _qwen2_tokenizer_dir; built once from the pinned
llama-cpp-python sdist, which pip fetches like the converter's). The SentencePiece families
(Mistral, Gemma 2/3, Phi-3) get a tiny SentencePiece model trained here, offline, with the special
tokens each family's converter reads (Gemma's <start_of_turn>/<end_of_turn>, Phi-3's added tokens
past the SentencePiece vocabulary and padded rows up to ``vocab_size``).

Weights are random but not flat: the q/k projections (or the q/k norm gains of Qwen3 and Gemma 3)
are scaled so attention is not uniform (rope, the sliding window and the layer pattern change the
output), Gemma's block-output norms outweigh its sqrt(hidden)-scaled input embedding (else the model
only repeats its input token), and the output head gives logits a few units wide.
"""

from __future__ import annotations

import copy
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

from aqrecipe.models.support import TESTED_FAMILIES

FAMILIES = tuple(f.name for f in TESTED_FAMILIES)  # the README's table and these tests name the same families

#: Gemma 2 and 3's sliding window, shorter than the 64-token test windows.
SLIDING_WINDOW = 16

# ---------------------------------------------------------------------------------------------
# The published config.json of each family's reference checkpoint (as on the Hub).

_HUB_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3": ("meta-llama/Llama-3.2-1B", {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128256,
    }),
    "mistral": ("mistralai/Mistral-7B-v0.1", {
        "architectures": ["MistralForCausalLM"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mistral",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32000,
    }),
    "qwen2": ("Qwen/Qwen2.5-0.5B", {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": 896,
        "initializer_range": 0.02,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }),
    "qwen3": ("Qwen/Qwen3-0.6B", {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 40960,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }),
    "gemma2": ("google/gemma-2-2b", {
        "architectures": ["Gemma2ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": 30.0,
        "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 2304,
        "initializer_range": 0.02,
        "intermediate_size": 9216,
        "max_position_embeddings": 8192,
        "model_type": "gemma2",
        "num_attention_heads": 8,
        "num_hidden_layers": 26,
        "num_key_value_heads": 4,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 256000,
    }),
    "gemma3": ("google/gemma-3-1b-pt", {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": None,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "initializer_range": 0.02,
        "intermediate_size": 6912,
        "max_position_embeddings": 32768,
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 26,
        "num_key_value_heads": 1,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 262144,
    }),
    "phi3": ("microsoft/Phi-3-mini-4k-instruct", {
        "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "embd_pdrop": 0.0,
        "eos_token_id": 32000,
        "hidden_act": "silu",
        "hidden_size": 3072,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 4096,
        "model_type": "phi3",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 32,
        "original_max_position_embeddings": 4096,
        "pad_token_id": 32000,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": 2047,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 32064,
    }),
}

# Demo tokenizer (SmolLM2): <|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2.
_DEMO_VOCAB = 49152
_SP_VOCAB = 1000  # pieces of the trained SentencePiece models
_PHI3_VOCAB = 1024  # Phi-3 pads 32011 used ids to 32064 rows; here 1011 to 1024

#: What shrinks each family. The rest of the real config is kept as published. Why each value:
#: hidden 256 and every intermediate size a multiple of 256 keep the real models' whole 256-blocks;
#: head counts keep each family's GQA ratio where 256 allows; head_dim is the family's own where it
#: differs from hidden / heads (Qwen3 128, Gemma 256) and 64 otherwise (Llama's, Qwen2's).
#: Mistral and Phi-3 keep their published sliding windows (4096, 2047): llama.cpp implements neither
#: (no SWA in its llama architecture; "Phi SWA is currently disabled"), and on the real models they
#: are longer than any test window as well. Gemma 3 keeps 6 layers: llama.cpp reads no layer pattern
#: from the converter's GGUF and uses its default period of 6 (5 local layers, then a global one).
_SHRINK: dict[str, dict[str, Any]] = {
    "llama3": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, vocab_size=_DEMO_VOCAB, bos_token_id=1, eos_token_id=2),
    "mistral": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=1, vocab_size=_SP_VOCAB),
    "qwen2": dict(hidden_size=256, intermediate_size=1280, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_window_layers=2),
    "qwen3": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_window_layers=2, vocab_size=_DEMO_VOCAB, bos_token_id=1,
                  eos_token_id=2),
    "gemma2": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=2,
                   num_key_value_heads=1, sliding_window=SLIDING_WINDOW, vocab_size=_SP_VOCAB),
    "gemma3": dict(hidden_size=256, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=4,
                   num_key_value_heads=1, sliding_window=SLIDING_WINDOW, vocab_size=_SP_VOCAB),
    "phi3": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=_PHI3_VOCAB, eos_token_id=_SP_VOCAB, pad_token_id=_SP_VOCAB),
}

#: llama.cpp's architecture for each family (general.architecture of the converted GGUF).
GGUF_ARCH = {"llama3": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
             "gemma3": "gemma3", "phi3": "phi3"}

#: Families whose RMSNorm weights are stored zero-centred (the model computes x * (1 + w)).
_ZERO_CENTRED_NORMS = ("gemma2", "gemma3")
_DEMO_TOKENIZER = ("llama3", "qwen3")


def reference_checkpoint(name: str) -> str:
    """The Hub model whose config.json the family's tiny model is shrunk from."""
    return _HUB_CONFIGS[name][0]


def family_config(name: str, dtype: str = "bfloat16") -> dict[str, Any]:
    """The tiny model's config.json: the real one with the sizes of ``_SHRINK``."""
    if name not in _HUB_CONFIGS:
        raise KeyError(f"unknown family {name!r}; one of {', '.join(FAMILIES)}")
    config = copy.deepcopy(_HUB_CONFIGS[name][1])
    config.update(_SHRINK[name])
    config["torch_dtype"] = dtype
    return config


def build_family(name: str, folder: Path, *, seed: int = 0, dtype: str | None = None,
                 super_weight: bool = False) -> Path:
    """Write a tiny random model of family ``name`` into ``folder`` (a Hub-like HF folder); returns it.

    ``dtype`` is the stored weight dtype ("float32" or "bfloat16"); by default the family's own
    (what its reference checkpoint ships: bfloat16, float32 for Gemma 2). ``super_weight`` plants one
    super weight in layer 0's down_proj at :func:`super_weight_position`, behind a massive activation
    channel, as in real checkpoints (the residual stream then carries a spike on most tokens).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = dtype or _HUB_CONFIGS[name][1]["torch_dtype"]
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hub_config = family_config(name, dtype)
    kwargs = {k: v for k, v in hub_config.items() if k not in ("architectures", "torch_dtype", "model_type")}
    config = AutoConfig.for_model(hub_config["model_type"], **kwargs)
    config.architectures = list(hub_config["architectures"])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _init_weights(name, model, config, seed, super_weight=super_weight)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    # The folder's config.json is the published one (shrunk), as in a Hub download, not transformers'
    # re-serialisation of it (rope_parameters, layer_types): that is what users' folders hold.
    (folder / "config.json").write_text(json.dumps(hub_config, indent=2) + "\n", encoding="utf-8")
    if name in _DEMO_TOKENIZER:
        _copy_demo_tokenizer(folder)
    elif name == "qwen2":
        _copy_qwen2_tokenizer(folder)
    else:
        _write_sentencepiece_tokenizer(name, folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Weights

# Measured on these models (transformers against llama.cpp's F16, 8 windows of 64 random tokens): with
# these gains, feeding transformers doubled positions leaves under 20 % of its top-1 tokens, dropping
# Gemma's sliding window about 30 % and making Gemma 3's global layer local about 70 %, while
# llama.cpp's F16 logits stay within 0.11 of transformers' (peakier attention, gain 2.4, doubles that).
_QK_GAIN = 1.5  # q/k projection std * sqrt(fan_in): attention scores about 2 units wide
_QK_NORM_GAIN = 1.6  # effective q/k RMSNorm gain of the families that normalise q and k per head
_HEAD_STD = 0.25  # embedding / output head std: logits about 4 units wide at hidden 256
# Gemma scales the (tied) embedding by sqrt(hidden) on the way in, so the input token's own row would
# dominate the residual stream and every model would just predict its input; the gains of Gemma's norms
# on the attention and MLP outputs make the blocks' contributions dominate instead. (In the other
# families post_attention_layernorm is the norm before the MLP: it keeps gain 1.)
# The planted super weight: 250 x the largest |w| of its down_proj, fed by an up_proj row 4 x larger than
# the others. On Mistral that makes layer 0's largest output 119 x layer 1's (detection asks 50 x).
SUPER_WEIGHT_LAYER = 0
_SUPER_WEIGHT_GAIN = 250.0
_SUPER_ACTIVATION_GAIN = 4.0
_POST_NORMS = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")
_POST_NORM_GAIN = 24.0  # at 6, Gemma 2 still predicted its input token 66 % of the time


def _init_weights(name: str, model: Any, config: Any, seed: int, *, super_weight: bool) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    zero_centred = name in _ZERO_CENTRED_NORMS
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_rows = config.num_attention_heads * head_dim
    k_rows = config.num_key_value_heads * head_dim

    def randn(shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    with torch.no_grad():
        for pname, param in sorted(model.named_parameters()):
            shape = param.shape
            if pname.endswith("norm.weight"):
                gain = 1.0
                if pname.endswith(("q_norm.weight", "k_norm.weight")):
                    gain = _QK_NORM_GAIN
                elif zero_centred and pname.endswith(_POST_NORMS):
                    gain = _POST_NORM_GAIN
                value = gain + 0.1 * randn(shape)
                param.copy_(value - 1.0 if zero_centred else value)
            elif pname.endswith(".bias"):
                param.copy_(0.05 * randn(shape))
            elif "embed_tokens" in pname or pname.startswith("lm_head"):
                param.copy_(_HEAD_STD * randn(shape))
            elif param.dim() == 2:
                value = randn(shape) / math.sqrt(shape[1])
                if pname.endswith(("q_proj.weight", "k_proj.weight")):
                    value *= _QK_GAIN
                elif pname.endswith("qkv_proj.weight"):  # Phi-3: q, k, v rows fused
                    value[: q_rows + k_rows] *= _QK_GAIN
                param.copy_(value)
            else:
                raise AssertionError(f"{name}: no initialisation rule for {pname} {tuple(shape)}")
        if super_weight:
            params = dict(model.named_parameters())
            mlp = f"model.layers.{SUPER_WEIGHT_LAYER}.mlp"
            down = params[f"{mlp}.down_proj.weight"]
            row, col = super_weight_position(name)
            down[row, col] = _SUPER_WEIGHT_GAIN * float(down.abs().max())
            if f"{mlp}.up_proj.weight" in params:
                params[f"{mlp}.up_proj.weight"][col] *= _SUPER_ACTIVATION_GAIN
            else:  # Phi-3: gate and up fused, up in the second half
                params[f"{mlp}.gate_up_proj.weight"][config.intermediate_size + col] *= _SUPER_ACTIVATION_GAIN
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()


def super_weight_position(name: str) -> tuple[int, int]:
    """(row, column) of the planted super weight in layer SUPER_WEIGHT_LAYER's down_proj (as HF and GGUF store it)."""
    config = family_config(name)
    return config["hidden_size"] // 3, config["intermediate_size"] // 5


# ---------------------------------------------------------------------------------------------
# Tokenizers

def _copy_demo_tokenizer(folder: Path) -> None:
    from aqrecipe.models.demo import materialize_demo

    demo = materialize_demo()
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (demo / file).is_file():
            shutil.copyfile(demo / file, folder / file)


# Qwen2: transformers (5.x) loads every qwen2 folder with its own Qwen2Tokenizer class, whatever
# tokenizer_config.json names, and that class re-creates Qwen2's pre-tokenizer around the file's
# vocabulary; llama.cpp's converter hashes that tokenizer's output, so only Qwen2's real vocabulary
# is recognised. It comes from llama.cpp's own tokenizer-test vocabulary (models/ggml-vocab-qwen2.gguf
# in the pinned llama-cpp-python sdist the converter is taken from), written out as the tokenizer.json
# a Qwen2 checkpoint ships, and cached.
_QWEN2_VOCAB_MEMBER = "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf"
_QWEN2_LAYOUT = "v1"  # bump when what _qwen2_tokenizer_dir writes changes (the cache is keyed by it)
_QWEN2_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _copy_qwen2_tokenizer(folder: Path) -> None:
    cached = _qwen2_tokenizer_dir()
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(cached / file, folder / file)


def _qwen2_tokenizer_dir() -> Path:
    """The Qwen2 tokenizer files, built once into aqrecipe's cache from the sdist's vocabulary."""
    import os
    import tarfile
    import tempfile

    from aqrecipe.models.converter.bundle import CONVERTER_VERSION, fetch_sdist
    from aqrecipe.models.demo import cache_root

    final = cache_root() / "test-tokenizers" / f"qwen2-{CONVERTER_VERSION}-{_QWEN2_LAYOUT}"
    if (final / "tokenizer_config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".qwen2-") as tmp:
        sdist = fetch_sdist(Path(tmp) / "sdist")
        with tarfile.open(sdist) as tar:
            member = next((m for m in tar if m.name.endswith(_QWEN2_VOCAB_MEMBER)), None)
            if member is None:
                raise FileNotFoundError(f"{sdist} has no {_QWEN2_VOCAB_MEMBER}")
            raw = tar.extractfile(member).read()  # type: ignore[union-attr]
        meta = _gguf_kv(raw)
        tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
        merges = meta["tokenizer.ggml.merges"]
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
        control = [(i, t) for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 3]
        tokenizer = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for i, t in control],
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": _QWEN2_PRETOKENIZE}, "behavior": "Isolated", "invert": False},
                byte_level]},
            "post_processor": byte_level, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 1},
                      "merges": [m.split(" ") for m in merges]},
        }
        eos = tokens[meta["tokenizer.ggml.eos_token_id"]]
        config = {
            "add_prefix_space": False,
            "added_tokens_decoder": {str(i): _token_entry(t) for i, t in control},
            "additional_special_tokens": [t for _, t in control if t != eos],
            "bos_token": None, "chat_template": meta["tokenizer.chat_template"], "clean_up_tokenization_spaces": False,
            "eos_token": eos, "errors": "replace", "model_max_length": 131072, "pad_token": eos,
            "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        }
        build = Path(tmp) / "tokenizer"
        build.mkdir()
        (build / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
        (build / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if final.exists() and not (final / "tokenizer_config.json").is_file():
            shutil.rmtree(final)  # left incomplete by an older layout
        try:
            os.replace(build, final)
        except OSError:  # another process built it meanwhile
            if not (final / "tokenizer_config.json").is_file():
                raise
    return final


def _gguf_kv(raw: bytes) -> dict[str, Any]:
    """The key/value metadata of a GGUF (v2/v3) file's bytes: scalars, strings and arrays of them."""
    import struct

    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return raw[pos - n:pos].decode("utf-8")

    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind: int) -> Any:
        if kind == 8:
            return string()
        if kind == 9:
            item, count = take("I"), take("Q")
            return [value(item) for _ in range(count)]
        return take(scalars[kind])

    if raw[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    pos = 4
    take("I")  # version
    take("Q")  # tensor count
    meta = {}
    for _ in range(take("Q")):
        key = string()
        meta[key] = value(take("I"))
    return meta


def _training_lines() -> list[str]:
    """Text for the SentencePiece models: the start of the built-in Wikipedia calibration split."""
    from aqrecipe.formats.corpus import calibration_text

    return [line for line in calibration_text()[:300_000].split("\n") if line.strip()]


def _train_sentencepiece(**options: Any) -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()), model_writer=buf, vocab_size=_SP_VOCAB, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, character_coverage=0.9995, num_threads=1, minloglevel=2, **options)
    return buf.getvalue()


def _token_entry(content: str, *, special: bool = True, rstrip: bool = False) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": rstrip, "single_word": False,
            "special": special}


_GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content']"
    " + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix "
    "if loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)
_PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
#: Phi-3's tokens after the SentencePiece vocabulary, at the offsets of 32000..32010 there.
_PHI3_ADDED = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
               "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")


_NO_MAX_LENGTH = 1000000000000000019884624838656  # what Hub tokenizer configs carry for "no limit"


def _write_sentencepiece_tokenizer(name: str, folder: Path) -> None:
    """tokenizer.model, tokenizer_config.json (+ added_tokens.json for Phi-3), then tokenizer.json."""
    if name in ("gemma2", "gemma3"):
        # Gemma: <pad> 0, <eos> 1, <bos> 2, <unk> 3, then <mask>, [multimodal] and the turn markers
        # as user-defined pieces; no dummy prefix (the converter writes add_space_prefix false).
        users = ["<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>"]
        model = _train_sentencepiece(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                                     bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=users,
                                     add_dummy_prefix=False)
        decoder = {str(i): _token_entry(t) for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *users])}
        config = {
            "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<bos>",
            "chat_template": _GEMMA2_TEMPLATE if name == "gemma2" else _GEMMA3_TEMPLATE,
            "clean_up_tokenization_spaces": False, "eos_token": "<eos>", "model_max_length": _NO_MAX_LENGTH,
            "pad_token": "<pad>", "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False,
        }
    else:
        # Llama-style (Mistral, Phi-3): <unk> 0, <s> 1, </s> 2, dummy prefix.
        model = _train_sentencepiece(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True)
        decoder = {str(i): _token_entry(t) for i, t in enumerate(["<unk>", "<s>", "</s>"])}
        config = {
            "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
            "additional_special_tokens": [], "bos_token": "<s>", "clean_up_tokenization_spaces": False,
            "eos_token": "</s>", "legacy": True, "model_max_length": _NO_MAX_LENGTH,
            "pad_token": None, "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False,
        }
        if name == "phi3":
            added = {tok: _SP_VOCAB + i for i, tok in enumerate(_PHI3_ADDED)}
            (folder / "added_tokens.json").write_text(json.dumps(dict(sorted(added.items())), indent=2) + "\n",
                                                      encoding="utf-8")
            for tok, tid in added.items():
                decoder[str(tid)] = _token_entry(tok, special=True, rstrip=tok not in ("<|endoftext|>",))
            config.update(add_bos_token=False, chat_template=_PHI3_TEMPLATE, eos_token="<|endoftext|>", legacy=False,
                          model_max_length=4096, pad_token="<|endoftext|>", padding_side="left")
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _write_tokenizer_json(folder)


def _write_tokenizer_json(folder: Path) -> None:
    """tokenizer.json as transformers converts it from tokenizer.model (what Hub folders ship too)."""
    import tempfile

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        shutil.copyfile(Path(tmp) / "tokenizer.json", folder / "tokenizer.json")
