"""ImportanceMatrix: per-tensor / per-layer importance and the super weights of a model.

Saved as two files that travel together: ``NAME.json`` (scores, super weights,
method, calibration info) and ``NAME.safetensors`` (arrays: per-layer ffn_down
activation ranges and per-column gradient scores), so a later run (another
budget, another recipe) reuses them without recomputing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from aqrecipe.errors import AqrecipeError
from aqrecipe.formats.fileio import atomic_path, atomic_write_text

FORMAT = "aqrecipe.importance/1"
NO_SUPER_WEIGHT = "no clear super weight"


class ImportanceFileError(AqrecipeError):
    """An importance file is missing, malformed or does not match its arrays."""

    code = "AQ450"  # the lead adds it to docs/errors.md


@dataclass(frozen=True)
class SuperWeight:
    """One scalar weight: ``tensor[row, col]`` (llama.cpp name, HF orientation [out, in])."""

    layer: int
    tensor: str  # llama.cpp name, e.g. blk.11.ffn_down.weight
    hf_name: str
    row: int  # output channel (spike in max|y|)
    col: int  # input channel (spike in max|x|)
    value: float
    max_out: float = 0.0  # the activation spike max|y_row| (0 when not measured)
    max_in: float = 0.0  # max|x_col|
    spike_ratio: float = 0.0  # max_out / median of the other layers' max|y|
    weight_z: float = 0.0  # |value - mean| / std within the tensor
    share: float = 0.0  # |value| * max_in / max_out
    saliency: float = 0.0  # |W * dL/dW| (0 when no gradient pass)
    saliency_ratio: float = 0.0  # saliency / median of per-tensor max saliency
    found_by: str = "activation"  # activation | gradient | combined
    iteration: int = 0  # detection round that found it (0 = first pass)

    @property
    def index(self) -> tuple[str, int, int]:
        return (self.tensor, self.row, self.col)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImportanceMatrix:
    """What the importance analysis found; JSON + safetensors on disk.

    ``tensor_scores[name][metric]`` and ``layer_scores[layer][metric]`` hold the
    per-tensor and per-layer scores (metrics: ``imatrix`` = mean x^2 summed over
    columns, ``gradient`` = sum |W * dL/dW|, and their ``_norm`` forms that sum to 1).
    ``arrays`` holds named float32 arrays (e.g. ``down_proj.max_out.11``).
    """

    tensor_scores: Mapping[str, Mapping[str, float]]
    layer_scores: Mapping[int, Mapping[str, float]]
    super_weights: tuple[SuperWeight, ...]
    computation_method: str
    calibration_dataset_info: Mapping[str, Any]
    model_fingerprint: str = ""
    notes: tuple[str, ...] = ()
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def super_weight_indices(self) -> list[tuple[str, int, int]]:
        """(tensor, row, col) of every super weight, in ranking order."""
        return [sw.index for sw in self.super_weights]

    @property
    def verdict(self) -> str:
        if not self.super_weights:
            return NO_SUPER_WEIGHT
        return f"{len(self.super_weights)} super weight(s)"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (arrays are listed by name and shape only)."""
        return {
            "format": FORMAT,
            "computation_method": self.computation_method,
            "calibration_dataset_info": dict(self.calibration_dataset_info),
            "model_fingerprint": self.model_fingerprint,
            "verdict": self.verdict,
            "notes": list(self.notes),
            "super_weights": [sw.to_dict() for sw in self.super_weights],
            "tensor_scores": {k: dict(v) for k, v in self.tensor_scores.items()},
            "layer_scores": {str(k): dict(v) for k, v in sorted(self.layer_scores.items())},
            "arrays": {k: list(v.shape) for k, v in sorted(self.arrays.items())},
        }


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


def save_importance(obj: ImportanceMatrix, path: str | Path) -> tuple[Path, Path]:
    """Write ``path`` (.json) and its .safetensors twin atomically; returns both paths."""
    from safetensors.numpy import save_file

    jpath, apath = _paths(path)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(obj.arrays.items())}
    with atomic_path(apath) as tmp:
        save_file(arrays, str(tmp), metadata={"format": FORMAT})
    atomic_write_text(jpath, json.dumps(obj.to_dict(), indent=1, sort_keys=True) + "\n")
    return jpath, apath


def load_importance(path: str | Path) -> ImportanceMatrix:
    """Read what :func:`save_importance` wrote (either file name, or the common stem)."""
    from safetensors.numpy import load_file

    jpath, apath = _paths(path)
    try:
        data = json.loads(jpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportanceFileError(f"importance file {jpath} does not exist",
                                  hint="run the importance analysis first (aqrecipe apply with super_weights)") from None
    except json.JSONDecodeError as exc:
        raise ImportanceFileError(f"{jpath} is not valid JSON: {exc}", hint="delete it and recompute") from None
    if data.get("format") != FORMAT:
        raise ImportanceFileError(f"{jpath} has format {data.get('format')!r}, expected {FORMAT!r}",
                                  hint="recompute it with this version of aqrecipe")
    arrays = load_file(str(apath)) if apath.exists() else {}
    if sorted(arrays) != sorted(data.get("arrays", {})):
        raise ImportanceFileError(f"{apath} does not hold the arrays {jpath} lists",
                                  hint="the two files must come from the same run; recompute them")
    return ImportanceMatrix(
        tensor_scores={k: dict(v) for k, v in data["tensor_scores"].items()},
        layer_scores={int(k): dict(v) for k, v in data["layer_scores"].items()},
        super_weights=tuple(SuperWeight(**sw) for sw in data["super_weights"]),
        computation_method=data["computation_method"],
        calibration_dataset_info=data["calibration_dataset_info"],
        model_fingerprint=data.get("model_fingerprint", ""),
        notes=tuple(data.get("notes", ())),
        arrays=dict(sorted(arrays.items())),
    )
