"""Per-tensor, per-type measurements: exact bytes, proxy error, measured KLD; JSON files.

A :class:`Measurement` is everything the planner needs, so a new budget needs
no new measurement. It is keyed by the model fingerprint and the imatrix hash
(:func:`imatrix_hash`) and saved as one JSON file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from aqrecipe.quant.blocktypes import fallback_for, layout
from aqrecipe.errors import PlanError
from aqrecipe.formats.fileio import atomic_write_text
from aqrecipe.recipe.sections import DEFAULT_CANDIDATES

if TYPE_CHECKING:
    from aqrecipe.imatrix.data import ImatrixData

MEASUREMENT_FORMAT = 2  # 2: TypeOption.fisher, Calibration.fisher_bias


def candidate_types(candidates: Iterable[str], row_len: int) -> list[str]:
    """Candidates after llama.cpp's fallback for ``row_len``, deduplicated, by bits per weight."""
    seen: dict[str, None] = {}
    for c in candidates:
        seen.setdefault(fallback_for(c, row_len), None)
    return sorted(seen, key=lambda t: (layout(t).bits_per_weight, t))


def imatrix_hash(imatrix: ImatrixData | None) -> str:
    """sha256 over the imatrix's per-weight importance (names sorted); "none" without one."""
    if imatrix is None:
        return "none"
    h = hashlib.sha256()
    for name in sorted(imatrix.entries):
        h.update(name.encode())
        h.update(np.ascontiguousarray(imatrix.importance(name), dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class TypeOption:
    """One candidate type of one tensor: exact bytes, proxy error, measured KLD (or None), and the
    KLD the diagonal Fisher predicts (measurement type fisher, tensors a probe can swap; else None)."""

    type: str
    n_bytes: int
    proxy: float
    kld: float | None = None
    fisher: float | None = None


@dataclass(frozen=True)
class TensorMeasurement:
    gguf_name: str
    hf_name: str
    role: str
    layer: int | None
    shape: tuple[int, ...]
    n_params: int
    options: tuple[TypeOption, ...]

    def option(self, type_name: str) -> TypeOption:
        for o in self.options:
            if o.type == type_name:
                return o
        raise KeyError(f"{self.gguf_name}: no option {type_name}")


@dataclass(frozen=True)
class Calibration:
    """proxy -> predicted KLD: ``exp(intercept[role]) * proxy ** slope`` (log-space fit); Fisher
    prediction -> KLD: ``exp(fisher_bias[type]) * fisher`` (the second-order estimate's shortfall at a
    type, measured where probes ran; 0 where none did)."""

    slope: float = 1.0
    intercepts: dict[str, float] = field(default_factory=dict)
    default_intercept: float = 0.0
    spearman_pooled: float | None = None
    spearman_within_tensor: float | None = None
    n_pairs: int = 0
    fisher_bias: dict[str, float] = field(default_factory=dict)
    spearman_fisher: float | None = None  # Fisher estimate vs the probes, pooled

    def predict(self, role: str, proxy: float) -> float:
        if proxy <= 0:
            return 0.0
        a = self.intercepts.get(role, self.default_intercept)
        return float(math.exp(a) * proxy**self.slope)

    def predict_fisher(self, type_name: str, fisher: float) -> float:
        return float(math.exp(self.fisher_bias.get(type_name, 0.0)) * max(fisher, 0.0))


@dataclass(frozen=True)
class Measurement:
    """All tensors of one model under one imatrix, plus the fixed (never quantized) bytes."""

    model_fingerprint: str
    imatrix_hash: str
    candidates: tuple[str, ...]
    method: str  # "fisher" | "proxy" | "kld"
    tensors: tuple[TensorMeasurement, ...]
    fixed_bytes: int  # tensors the planner does not choose (norms, 1-D): their F32 bytes
    fixed_params: int
    calibration: Calibration = Calibration()
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = MEASUREMENT_FORMAT

    @property
    def n_params(self) -> int:
        return self.fixed_params + sum(t.n_params for t in self.tensors)

    def predicted(self, t: TensorMeasurement, o: TypeOption) -> float:
        """Predicted KLD contribution: the measured KLD when there is one, else the Fisher estimate
        when there is one, else the calibrated proxy."""
        if o.kld is not None:
            return max(0.0, o.kld)
        if o.fisher is not None:
            return self.calibration.predict_fisher(o.type, o.fisher)
        return self.calibration.predict(t.role, o.proxy)

    def tensor(self, gguf_name: str) -> TensorMeasurement:
        for t in self.tensors:
            if t.gguf_name == gguf_name:
                return t
        raise KeyError(gguf_name)

    def with_calibration(self, calibration: Calibration) -> Measurement:
        return replace(self, calibration=calibration)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        if d.get("format_version") != MEASUREMENT_FORMAT:
            raise PlanError(f"measurement format {d.get('format_version')!r} is not supported",
                            hint="delete the measurement file and measure again")
        tensors = tuple(
            TensorMeasurement(**{**t, "shape": tuple(t["shape"]),
                                 "options": tuple(TypeOption(**o) for o in t["options"])})
            for t in d["tensors"]
        )
        return cls(**{**d, "tensors": tensors, "candidates": tuple(d["candidates"]),
                      "calibration": Calibration(**d["calibration"])})

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> Measurement:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"cannot read measurement file {path}: {exc}",
                            hint="delete it and measure again") from None
