"""The recipe's ``planner:`` section: frozen dataclasses and its JSON Schema fragment."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..blocktypes import TYPE_NAMES
from ..errors import PlanError
from .measurement import DEFAULT_CANDIDATES

_MEASUREMENT_TYPES = ("proxy", "kld")


@dataclass(frozen=True)
class MeasurementSpec:
    """How sensitivities are measured.

    ``proxy``: the imatrix-weighted round-trip error for every (tensor, type),
    calibrated to KLD with ``calibrate_tensors`` tensors (x up to 5 types each)
    measured exactly. ``kld``: every (tensor, type) measured exactly (one
    forward pass each).
    """

    type: str = "proxy"
    samples: int = 8
    seq_len: int = 128
    calibrate_tensors: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.type not in _MEASUREMENT_TYPES:
            raise PlanError(f"unknown measurement type {self.type!r}", hint="use proxy or kld")
        if self.samples < 1 or self.seq_len < 2 or self.calibrate_tensors < 0:
            raise PlanError("measurement needs samples >= 1, seq_len >= 2, calibrate_tensors >= 0",
                            hint="the defaults are samples 8, seq_len 128, calibrate_tensors 20")


@dataclass(frozen=True)
class PlannerSpec:
    """``planner: {type: budget, target_bpw | target_bytes, max_kld, candidates, measurement}``."""

    type: str = "budget"
    target_bpw: float | None = None
    target_bytes: int | None = None
    max_kld: float | None = None
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    measurement: MeasurementSpec = MeasurementSpec()

    def __post_init__(self) -> None:
        if self.type != "budget":
            raise PlanError(f"unknown planner type {self.type!r}", hint="use type: budget")
        if self.target_bpw is not None and self.target_bytes is not None:
            raise PlanError("give target_bpw or target_bytes, not both", hint="remove one of them")
        if self.target_bpw is None and self.target_bytes is None and self.max_kld is None:
            raise PlanError("the planner needs a size target or a quality cap",
                            hint="set target_bpw (e.g. 3.5), target_bytes or max_kld")
        bad = [c for c in self.candidates if c not in TYPE_NAMES]
        if bad or not self.candidates:
            raise PlanError(f"unknown candidate types {bad}" if bad else "candidates is empty",
                            hint=f"use types from: {', '.join(TYPE_NAMES)}")

    def budget_bytes(self, n_params: int) -> int | None:
        """The size target in bytes (``target_bpw`` counts every parameter, like a plan's bpw)."""
        if self.target_bytes is not None:
            return int(self.target_bytes)
        if self.target_bpw is not None:
            return int(self.target_bpw * n_params / 8)
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlannerSpec:
        d = dict(d)
        meas = MeasurementSpec(**d.pop("measurement", {}) or {})
        if "candidates" in d:
            d["candidates"] = tuple(d["candidates"])
        return cls(**d, measurement=meas)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        return d


SCHEMA_FRAGMENT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "planner",
    "description": "Dynamic layer-wise quantization: measure each tensor's sensitivity per candidate type, "
                   "then choose one type per tensor minimising predicted KLD under a size target and "
                   "an optional quality cap. The result is a set of exact-name rules.",
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"const": "budget", "description": "Planner kind: 'budget' (multiple-choice knapsack)."},
        "target_bpw": {"type": "number", "exclusiveMinimum": 0, "maximum": 32,
                       "description": "Target bits per weight over all tensors (norms included)."},
        "target_bytes": {"type": "integer", "minimum": 1, "description": "Target total tensor bytes."},
        "max_kld": {"type": "number", "exclusiveMinimum": 0,
                    "description": "Cap on the predicted total KLD (nats/token). Alone: the smallest "
                                   "model meeting it; with a size target: an error if both cannot hold."},
        "candidates": {"type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"enum": list(TYPE_NAMES)},
                       "description": "Types to choose from; rows that do not fit a type's blocks use "
                                      "llama.cpp's fallback."},
        "measurement": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type"],
            "description": "How sensitivities are measured (saved and reused across budgets).",
            "properties": {
                "type": {"enum": list(_MEASUREMENT_TYPES),
                         "description": "proxy: imatrix-weighted round-trip error calibrated to KLD; "
                                        "kld: one forward pass per (tensor, type)."},
                "samples": {"type": "integer", "minimum": 1, "maximum": 1024,
                            "description": "Calibration windows for the KLD forward passes."},
                "seq_len": {"type": "integer", "minimum": 2, "maximum": 8192,
                            "description": "Tokens per calibration window."},
                "calibrate_tensors": {"type": "integer", "minimum": 0,
                                      "description": "proxy only: tensors measured exactly to fit the "
                                                     "proxy -> KLD scale per role (0: uncalibrated)."},
                "seed": {"type": "integer", "minimum": 0, "description": "Window sampling seed."},
            },
        },
    },
    "anyOf": [{"required": ["target_bpw"]}, {"required": ["target_bytes"]}, {"required": ["max_kld"]}],
    "not": {"required": ["target_bpw", "target_bytes"]},
}
