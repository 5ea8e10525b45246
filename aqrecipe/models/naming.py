"""HF tensor names -> llama.cpp (GGUF) names, expected shapes and GGUF order.

All name knowledge comes from ``gguf.TensorNameMap``; this module adds only
the shape each tensor kind must have under a given config, and the order.
"""

from __future__ import annotations

import gguf

from aqrecipe.models.architectures import ArchInfo
from aqrecipe.models.tensor_names import layer_of

#: HF tensors that are buffers, not weights (recomputed by every runtime).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_T = gguf.MODEL_TENSOR


class NameMapper:
    """Maps HF names of one architecture to GGUF names and tensor kinds."""

    def __init__(self, arch: ArchInfo) -> None:
        self._arch = arch
        self._map = gguf.TensorNameMap(arch.gguf_arch, arch.n_layers)

    @staticmethod
    def is_ignored(hf_name: str) -> bool:
        return hf_name.endswith(_IGNORED_SUFFIXES)

    def lookup(self, hf_name: str) -> tuple[gguf.MODEL_TENSOR, str] | None:
        """(kind, gguf_name) or None when llama.cpp has no such tensor."""
        return self._map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))

    def expected_shape(self, kind: gguf.MODEL_TENSOR, gguf_name: str) -> tuple[int, ...] | None:
        """The [out, in] shape config.json implies, or None if aqrecipe does not check it."""
        a = self._arch
        q_rows, kv_rows = a.n_head * a.head_dim, a.n_head_kv * a.head_dim
        weight_shapes = {
            _T.TOKEN_EMBD: (a.vocab, a.hidden),
            _T.OUTPUT: (a.vocab, a.hidden),
            _T.OUTPUT_NORM: (a.hidden,),
            _T.ATTN_NORM: (a.hidden,),
            _T.FFN_NORM: (a.hidden,),
            _T.ATTN_Q: (q_rows, a.hidden),
            _T.ATTN_K: (kv_rows, a.hidden),
            _T.ATTN_V: (kv_rows, a.hidden),
            _T.ATTN_OUT: (a.hidden, q_rows),
            _T.FFN_GATE: (a.ffn, a.hidden),
            _T.FFN_UP: (a.ffn, a.hidden),
            _T.FFN_DOWN: (a.hidden, a.ffn),
        }
        shape = weight_shapes.get(kind)
        if shape is not None and gguf_name.endswith(".bias"):
            shape = shape[:1]  # a bias has one value per output row
        return shape


def gguf_order_key(gguf_name: str) -> tuple:
    """token_embd, blk.0 .. blk.N (by name within a block), output_norm, output, others."""
    if gguf_name.startswith("token_embd."):
        return (0, 0, gguf_name)
    layer = layer_of(gguf_name)
    if layer is not None:
        return (1, layer, gguf_name)
    if gguf_name.startswith("output_norm."):
        return (2, 0, gguf_name)
    if gguf_name.startswith("output."):
        return (3, 0, gguf_name)
    return (4, 0, gguf_name)
