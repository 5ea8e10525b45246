"""aqrecipe.models.tensor_names: the one home of layer, role and llama.cpp's tensor order."""

from __future__ import annotations

import re

import pytest

from aqrecipe.models.tensor_names import BLOCK_ROLES, gguf_order_key, hf_layer_of, layer_of, role_of
from aqrecipe.quant.sizes import tensor_bytes

GGUF_NAMES = ["token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_norm.weight",
              "blk.0.attn_q.weight", "blk.0.attn_q.bias", "blk.12.attn_k.weight", "blk.12.attn_k.bias",
              "blk.3.attn_v.weight", "blk.3.attn_output.weight", "blk.3.ffn_norm.weight",
              "blk.31.ffn_gate.weight", "blk.31.ffn_up.weight", "blk.31.ffn_down.weight"]


def _old_layer_of(name: str) -> int | None:  # plan/compiler, importance/scores, calibration/observers, imatrix/show
    m = re.match(r"^blk\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _old_planner_layer_role(name: str, tied: bool) -> tuple[int | None, str]:  # planner/measurement
    m = re.match(r"^blk\.(\d+)\.([a-z_]+)\.weight$", name)
    if name == "token_embd.weight":
        role = "output" if tied else "token_embd"
    elif name == "output.weight":
        role = "output"
    else:
        role = m.group(2) if m else name.removesuffix(".weight")
    return (int(m.group(1)) if m else None), role


@pytest.mark.parametrize("name", GGUF_NAMES + ["blk.7.", "blkx.1.attn_q.weight", "rope_freqs.weight"])
def test_layer_of_gguf_names_matches_every_old_copy(name: str) -> None:
    assert layer_of(name) == _old_layer_of(name)


def test_layer_of_values() -> None:
    assert layer_of("blk.0.attn_q.weight") == 0
    assert layer_of("blk.31.ffn_down.weight") == 31
    assert layer_of("token_embd.weight") is None and layer_of("output.weight") is None
    assert layer_of("model.layers.3.self_attn.q_proj.weight") is None  # an HF name is not a GGUF one


def test_hf_layer_of() -> None:
    assert hf_layer_of("model.layers.3.self_attn.q_proj.weight") == 3
    assert hf_layer_of("model.layers.17.mlp.down_proj.weight") == 17
    assert hf_layer_of("model.embed_tokens.weight") is None
    assert hf_layer_of("lm_head.weight") is None
    assert hf_layer_of("blk.3.attn_q.weight") is None


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("name", [n for n in GGUF_NAMES if n.endswith(".weight")])
def test_role_and_layer_of_weights_match_the_planner_copy(name: str, tied: bool) -> None:
    assert (layer_of(name), role_of(name, tied_output=tied)) == _old_planner_layer_role(name, tied)


def test_roles() -> None:
    assert [role_of(f"blk.2.{r}.weight") for r in BLOCK_ROLES] == list(BLOCK_ROLES)
    assert role_of("blk.2.attn_q.bias") == "attn_q"  # a bias has its weight's role
    assert role_of("token_embd.weight") == "token_embd"
    assert role_of("token_embd.weight", tied_output=True) == "output"
    assert role_of("output.weight") == "output"
    assert role_of("output_norm.weight") == "output_norm"


def test_gguf_order() -> None:
    names = ["output.weight", "blk.10.attn_q.weight", "rope_freqs.weight", "blk.2.ffn_up.weight",
             "output_norm.weight", "token_embd.weight", "blk.2.attn_k.weight"]
    assert sorted(names, key=gguf_order_key) == [
        "token_embd.weight", "blk.2.attn_k.weight", "blk.2.ffn_up.weight", "blk.10.attn_q.weight",
        "output_norm.weight", "output.weight", "rope_freqs.weight"]


def test_tensor_bytes() -> None:
    assert tensor_bytes("F32", (3, 5)) == 60
    assert tensor_bytes("F16", (7,)) == 14
    assert tensor_bytes("Q8_0", (4, 64)) == 4 * 2 * 34
    assert tensor_bytes("Q4_K", (2, 3, 256)) == 6 * 144
    assert tensor_bytes("F32", ()) == 4  # a 0-d tensor: one row of one weight
