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


def check_shapes(path: Path, arch: ArchInfo, tensors: tuple[TensorInfo, ...]) -> None:
    """The hyperparameters against the tensor shapes, in GGUF terms; one error lists every disagreement."""
    h, f = arch.hidden, arch.ffn
    expected = {  # role -> (rows or None, columns or None) the hyperparameters imply
        "token_embd": (None, h), "output": (None, h), "attn_q": (None, h), "attn_k": (None, h),
        "attn_v": (None, h), "ffn_gate": (f or None, h), "ffn_up": (f or None, h), "ffn_down": (h, f or None),
    }
    problems = []
    for info in tensors:
        role = role_of(info.gguf_name)
        if len(info.shape) != 2 or not info.gguf_name.endswith(".weight") or role not in expected:
            continue
        rows, cols = expected[role]
        want = [rows if rows is not None else info.shape[0], cols if cols is not None else info.shape[1]]
        if list(info.shape) != want:
            problems.append(f"{info.gguf_name} has shape {list(info.shape)} but the configuration implies {want}")
        if len(problems) >= 3:
            break
    blocks = {layer for info in tensors if (layer := layer_of(info.gguf_name)) is not None}
    missing = sorted(set(range(arch.n_layers)) - blocks)
    if missing:
        problems.append(f"the configuration says {arch.n_layers} layers but the weights have no layer "
                        f"{', '.join(map(str, missing[:5]))}")
    if not any(info.gguf_name == "token_embd.weight" for info in tensors):
        problems.append("there is no token embedding (token_embd.weight)")
    if problems:
        raise ModelError(
            f"{path}: the configuration does not match the weights: {'; '.join(problems)}",
            hint="use the config.json that came with these weights; it belongs to another model or was edited",
        )
