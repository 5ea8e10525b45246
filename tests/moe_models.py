"""Tiny random mixture-of-experts models, built from each family's published config.

Each starts from the ``config.json`` of the family's reference checkpoint on the Hugging Face Hub,
kept key for key except the sizes: two or three layers, hidden 256 (whole 256-value K-quant
blocks), few experts. Qwen2-MoE (Qwen1.5-MoE-A2.7B) adds a shared expert behind a sigmoid gate of
its own and q/k/v biases. DeepSeek-V3 keeps its shape of first dense layers, a shared expert, grouped
sigmoid routing and MLA attention (its multi-token-prediction layer and FP8 quantization config are
dropped: llama.cpp's converter skips the first and a float checkpoint has no second). The folder is
what ``save_pretrained`` writes (per-expert checkpoint tensors, as on the Hub) plus the demo's
tokenizer, which llama.cpp's converter recognises.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

#: family -> (reference checkpoint, its published config.json, the tiny sizes)
MOE_FAMILIES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "mixtral": ("mistralai/Mixtral-8x7B-v0.1", {
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
        "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": 32000,
    }, {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256}),
    "qwen3moe": ("Qwen/Qwen3-30B-A3B", {
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
        "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
        "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": True,
        "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
        "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    }, {"hidden_size": 256, "head_dim": 64, "intermediate_size": 512, "moe_intermediate_size": 256,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 16, "num_experts_per_tok": 4,
        "num_hidden_layers": 2, "max_window_layers": 2, "max_position_embeddings": 256}),
    "qwen2moe": ("Qwen/Qwen1.5-MoE-A2.7B", {
        "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "decoder_sparse_step": 1, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048,
        "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 8192,
        "max_window_layers": 21, "model_type": "qwen2_moe", "moe_intermediate_size": 1408,
        "norm_topk_prob": False, "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
        "num_hidden_layers": 24, "num_key_value_heads": 16, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 5632, "sliding_window": 32768, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    }, {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256,
        "shared_expert_intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_experts": 8, "num_experts_per_tok": 4, "num_hidden_layers": 2, "max_window_layers": 2,
        "max_position_embeddings": 256}),
    "deepseek3": ("deepseek-ai/DeepSeek-V3", {
        "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
        "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
        "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
        "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
        "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
    }, {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256, "num_hidden_layers": 3,
        "first_k_dense_replace": 1, "n_routed_experts": 16, "num_experts_per_tok": 4, "n_group": 4,
        "topk_group": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 256,
        "kv_lora_rank": 256, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64,
        "max_position_embeddings": 4096,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 4, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "original_max_position_embeddings": 1024, "type": "yarn"}}),
}
#: the demo tokenizer's vocabulary (every tiny model uses it)
VOCAB = 49152
#: routed experts per layer, by family
N_EXPERT = {"mixtral": 8, "qwen3moe": 16, "qwen2moe": 8, "deepseek3": 16}


def moe_config(name: str) -> dict[str, Any]:
    """The published config with the tiny sizes and the demo tokenizer's vocabulary and special tokens."""
    _, published, sizes = MOE_FAMILIES[name]
    config = {**published, **sizes, "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2}
    config["torch_dtype"] = "float32"
    return config


def build_moe(name: str, folder: Path, *, seed: int = 0, max_shard_size: str | None = None) -> Path:
    """Write the tiny random ``name`` model (float32 safetensors, sharded if ``max_shard_size`` is given,
    + the demo tokenizer) to ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aqrecipe.models.demo import materialize_demo

    config_dict = moe_config(name)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random routers wide enough that routing is not a coin toss
        for pname, param in model.named_parameters():
            if pname.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight")):
                param.normal_(0.0, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(materialize_demo() / file, folder / file)
    return folder
