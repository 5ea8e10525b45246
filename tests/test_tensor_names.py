"""aqrecipe.models.tensor_names: the one home of layer, role and the q/k rope permutation."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from aqrecipe.models.tensor_names import (BLOCK_ROLES, hf_layer_of, layer_of, permute_rope_rows, role_of,
                                          rope_heads, to_gguf_layout, to_hf_layout, unpermute_rope_rows)
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


def _old_rope_heads(arch, name: str) -> int | None:  # models/source.read_for_gguf, apply/simulate._to_hf_layout
    if arch.spec.permute_qk and name.startswith("blk."):
        if ".attn_q." in name:
            return arch.n_head
        if ".attn_k." in name:
            return arch.n_head_kv
    return None


def _arch(permute_qk: bool = True):
    return SimpleNamespace(spec=SimpleNamespace(permute_qk=permute_qk), n_head=4, n_head_kv=2)


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


@pytest.mark.parametrize("permute_qk", [True, False])
@pytest.mark.parametrize("name", GGUF_NAMES)
def test_rope_rule_matches_the_old_copies(name: str, permute_qk: bool) -> None:
    arch = _arch(permute_qk)
    assert rope_heads(arch, name) == _old_rope_heads(arch, name)


@pytest.mark.parametrize("name", GGUF_NAMES)
def test_layout_round_trip_and_old_behaviour(name: str) -> None:
    arch = _arch()
    rows = 16 if ".attn_q." in name else 8
    w = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    if name.endswith(".bias"):
        w = w[:, 0].copy()
    heads = _old_rope_heads(arch, name)
    gguf = to_gguf_layout(arch, name, w)
    np.testing.assert_array_equal(gguf, w if heads is None else permute_rope_rows(w, heads))
    np.testing.assert_array_equal(to_hf_layout(arch, name, gguf), w)
    if heads is not None:
        assert not np.array_equal(gguf, w)


def test_permutation_values_and_inverse() -> None:
    np.testing.assert_array_equal(permute_rope_rows(np.arange(8), 2), [0, 2, 1, 3, 4, 6, 5, 7])
    x = np.random.default_rng(0).standard_normal((24, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rope_rows(x, 3), 3), x)
    with pytest.raises(ValueError):
        permute_rope_rows(np.zeros((6, 2)), 4)


def test_tensor_bytes() -> None:
    assert tensor_bytes("F32", (3, 5)) == 60
    assert tensor_bytes("F16", (7,)) == 14
    assert tensor_bytes("Q8_0", (4, 64)) == 4 * 2 * 34
    assert tensor_bytes("Q4_K", (2, 3, 256)) == 6 * 144
    assert tensor_bytes("F32", ()) == 4  # a 0-d tensor: one row of one weight
