"""The recipe's ``planner:`` section: frozen dataclasses and its JSON Schema fragment."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aqrecipe.quant.blocktypes import TYPE_NAMES
from aqrecipe.errors import PlanError
from aqrecipe.recipe.schema import section_schema
from aqrecipe.planner.measurement import DEFAULT_CANDIDATES

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


#: The ``planner:`` section of ``aqrecipe/data/recipe.schema.json``.
SCHEMA_FRAGMENT: dict[str, Any] = section_schema("planner")
