"""The recipe's ``super_weights:`` section: detection and protection settings.

Frozen data only (design convention 2); the stage functions read it. Every
polymorphic node carries an explicit ``type:`` field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from aqrecipe.errors import RecipeError
from aqrecipe.recipe.schema import section_schema

DETECT_TYPES = ("combined", "activation", "gradient")
PROTECT_TYPES = ("raise-tensor", "imatrix-only", "none")
PROTECT_TENSOR_TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K")


def _bad(msg: str, hint: str) -> RecipeError:
    return RecipeError(f"super_weights: {msg}", hint=hint)


@dataclass(frozen=True)
class DetectSpec:
    """How super weights are found. See :data:`SCHEMA_FRAGMENT` for each field's meaning."""

    type: str = "combined"
    spike_ratio: float = 50.0
    min_weight_z: float = 6.0
    min_share: float = 0.3
    gradient_ratio: float = 20.0
    confirm_ratio: float = 3.0
    max_count: int = 8
    samples: int = 8
    seq_len: int = 128
    gradient_samples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.type not in DETECT_TYPES:
            raise _bad(f"unknown detect type {self.type!r}", f"use one of {', '.join(DETECT_TYPES)}")
        if self.spike_ratio <= 1 or self.gradient_ratio <= 1 or self.confirm_ratio < 0:
            raise _bad("spike_ratio and gradient_ratio must be > 1, confirm_ratio >= 0",
                       "defaults: spike_ratio 50, gradient_ratio 20, confirm_ratio 3")
        if not 0 < self.min_share <= 1:
            raise _bad(f"min_share must be in (0, 1], got {self.min_share}", "0.3 is the default")
        if self.max_count < 0 or self.samples < 1 or self.seq_len < 2 or self.gradient_samples < 1:
            raise _bad("max_count >= 0, samples >= 1, gradient_samples >= 1 and seq_len >= 2 are required",
                       "e.g. max_count 8, samples 8, seq_len 128, gradient_samples 4")


@dataclass(frozen=True)
class ProtectSpec:
    """How found super weights are protected."""

    type: str = "raise-tensor"
    tensor_type: str = "Q8_0"
    imatrix_boost: float = 100.0
    restore_values: bool = True

    def __post_init__(self) -> None:
        if self.type not in PROTECT_TYPES:
            raise _bad(f"unknown protect type {self.type!r}", f"use one of {', '.join(PROTECT_TYPES)}")
        if self.tensor_type not in PROTECT_TENSOR_TYPES:
            raise _bad(f"protect tensor_type {self.tensor_type!r} is not allowed",
                       f"use one of {', '.join(PROTECT_TENSOR_TYPES)}")
        if self.imatrix_boost < 1:
            raise _bad(f"imatrix_boost must be >= 1, got {self.imatrix_boost}", "1 disables the boost; 100 is the default")


@dataclass(frozen=True)
class SuperWeightsSection:
    """``super_weights: {enabled, detect: {...}, protect: {...}}``."""

    enabled: bool = True
    detect: DetectSpec = field(default_factory=DetectSpec)
    protect: ProtectSpec = field(default_factory=ProtectSpec)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SuperWeightsSection":
        """Build from the (schema-validated) recipe mapping; missing keys take defaults."""
        d = dict(d or {})
        unknown = set(d) - {"enabled", "detect", "protect"}
        if unknown:
            raise _bad(f"unknown keys {sorted(unknown)}", "allowed: enabled, detect, protect")
        return cls(
            enabled=bool(d.get("enabled", True)),
            detect=_build(DetectSpec, d.get("detect"), "detect"),
            protect=_build(ProtectSpec, d.get("protect"), "protect"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(kind: type, d: Mapping[str, Any] | None, where: str) -> Any:
    d = dict(d or {})
    allowed = set(kind.__dataclass_fields__)
    unknown = set(d) - allowed
    if unknown:
        raise _bad(f"unknown keys in {where}: {sorted(unknown)}", f"allowed: {', '.join(sorted(allowed))}")
    return kind(**d)


#: The ``super_weights:`` section of ``aqrecipe/data/recipe.schema.json``.
SCHEMA_FRAGMENT: dict[str, Any] = section_schema("super_weights")
