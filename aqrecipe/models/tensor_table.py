"""The tensor table every model source gives: one entry per GGUF tensor, checked against the hyperparameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aqrecipe.errors import ModelError
from aqrecipe.models.architectures import ArchInfo
from aqrecipe.models.tensor_names import layer_of, role_of


@dataclass(frozen=True)
class TensorInfo:
    """One GGUF tensor: its name, the HF tensor it comes from, its shape ([rows, row_len]) and source dtype."""

    hf_name: str  # the (first) HF tensor it is converted from; the GGUF name for GGUF input
    gguf_name: str
    shape: tuple[int, ...]
    dtype: str  # the stored dtype of its source: F32, F16, BF16
    nbytes: int  # bytes of its source data

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


#: how each hyperparameter is called where the user can fix it (config.json keys for HF folders)
HF_CONFIG_KEYS = {"vocab": "vocab_size", "hidden": "hidden_size", "ffn": "intermediate_size", "layers": "num_hidden_layers",
                  "heads": "num_attention_heads", "kv_heads": "num_key_value_heads", "head_dim": "head_dim"}


def gguf_keys(arch: str) -> dict[str, str]:
    """The same hyperparameters as llama.cpp's metadata keys (for GGUF input)."""
    return {"vocab": f"{arch}.vocab_size", "hidden": f"{arch}.embedding_length", "ffn": f"{arch}.feed_forward_length",
            "layers": f"{arch}.block_count", "heads": f"{arch}.attention.head_count",
            "kv_heads": f"{arch}.attention.head_count_kv", "head_dim": f"{arch}.attention.key_length"}


def check_shapes(path: Path, arch: ArchInfo, tensors: tuple[TensorInfo, ...], keys: dict[str, str],
                 *, declared_vocab: int | None = None) -> None:
    """The hyperparameters against the tensor shapes; one error lists every disagreement by the key to fix.

    ``keys`` names each hyperparameter as the user sees it (:data:`HF_CONFIG_KEYS` or :func:`gguf_keys`);
    ``declared_vocab`` is the vocabulary size the configuration states, if it states one.
    """
    h, f = arch.hidden, arch.ffn
    q_rows, kv_rows = arch.n_head * arch.head_dim, arch.n_head_kv * arch.head_dim
    heads = f"{keys['heads']} x {keys['head_dim']} = {arch.n_head} x {arch.head_dim}"
    kv_heads = f"{keys['kv_heads']} x {keys['head_dim']} = {arch.n_head_kv} x {arch.head_dim}"
    has_gate = any(role_of(info.gguf_name) == "ffn_gate" for info in tensors)
    expected = {  # role -> ((rows, what says so) or None, (columns, what says so) or None)
        "token_embd": (None, (h, keys["hidden"])), "output": (None, (h, keys["hidden"])),
        "attn_q": ((q_rows, heads), (h, keys["hidden"])), "attn_k": ((kv_rows, kv_heads), (h, keys["hidden"])),
        "attn_v": (None, (h, keys["hidden"])),
        "ffn_gate": ((f, keys["ffn"]) if f else None, (h, keys["hidden"])),
        "ffn_up": ((f, keys["ffn"]) if f else None, (h, keys["hidden"])),
        "ffn_down": ((h, keys["hidden"]), (f, keys["ffn"]) if f else None),
    }
    problems: list[str] = []
    for info in tensors:
        role = role_of(info.gguf_name)
        if len(info.shape) != 2 or not info.gguf_name.endswith(".weight") or role not in expected:
            continue
        for axis, want in enumerate(expected[role]):
            if role == "ffn_up" and axis == 0 and not has_gate and info.shape[0] == 2 * f:
                continue  # no separate ffn_gate: gate and up fused in one tensor (Phi-3), twice the rows
            if want is not None and info.shape[axis] != want[0]:
                shown = info.gguf_name if info.hf_name == info.gguf_name else f"{info.gguf_name} ({info.hf_name})"
                problem = (f"{want[1]} implies {want[0]} {'rows' if axis == 0 else 'columns'} but "
                           f"{shown} has {info.shape[axis]} (shape {list(info.shape)})")
                if not any(p.startswith(f"{want[1]} implies") for p in problems):
                    problems.append(problem)
    embd = next((info for info in tensors if info.gguf_name == "token_embd.weight"), None)
    if declared_vocab is not None and embd is not None and embd.shape[0] != declared_vocab:
        problems.append(f"{keys['vocab']} is {declared_vocab} but token_embd.weight ({embd.hf_name}) has "
                        f"{embd.shape[0]} rows")
    blocks = {layer for info in tensors if (layer := layer_of(info.gguf_name)) is not None}
    missing = sorted(set(range(arch.n_layers)) - blocks)
    if missing:
        problems.append(f"{keys['layers']} is {arch.n_layers} but the weights have no layer "
                        f"{', '.join(map(str, missing[:5]))}")
    if not any(info.gguf_name == "token_embd.weight" for info in tensors):
        problems.append("there is no token embedding (token_embd.weight)")
    if problems:
        raise ModelError(
            f"{path}: the configuration does not match the weights: {'; '.join(problems)}",
            hint="use the configuration that came with these weights; it belongs to another model or was edited",
        )
