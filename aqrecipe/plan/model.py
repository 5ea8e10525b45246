"""The execution plan: frozen, JSON-serialisable, hashable.

A plan lists every tensor of the model with the type it will be written as,
the reason that type was chosen and the bytes it will take. ``compile``
prints it; ``apply`` executes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aqrecipe import __version__
from aqrecipe.errors import PlanError
from aqrecipe.formats.bounded import read_text_bounded

if TYPE_CHECKING:
    from aqrecipe.models import ModelSource

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PlanEntry:
    """One tensor of the plan."""

    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # Hugging Face order: [out_features, in_features]
    source_dtype: str
    type: str  # the type written
    requested_type: str  # before llama.cpp's fallback for rows that do not fit
    chosen_by: str  # the rule, mixture bump or default that chose it
    n_params: int
    n_bytes: int
    #: ``Rounding.to_dict()`` of a gptq entry; None is round-to-nearest (left out of the plan's JSON,
    #: so plans, their hashes and GGUF bytes without gptq are those of before)
    rounding: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.rounding is None:
            del data["rounding"]
        return data

    @property
    def fallback(self) -> bool:
        return self.type != self.requested_type

    @property
    def quantized(self) -> bool:
        return self.type not in ("F32", "F16", "BF16")

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.n_bytes / self.n_params if self.n_params else 0.0


@dataclass(frozen=True)
class Plan:
    """Everything ``apply`` needs to produce the output, and nothing run-time."""

    model: str  # the model reference as written ("demo" or a path)
    model_path: str
    model_fingerprint: str
    arch: str
    mixture: str | None
    file_type: int
    entries: tuple[PlanEntry, ...]
    unused_rules: tuple[str, ...] = ()
    needs_imatrix: tuple[str, ...] = ()  # tensors whose type requires an importance matrix
    recipe_text: str | None = None
    recipe_path: str | None = None
    tool_version: str = __version__
    format_version: int = PLAN_FORMAT_VERSION
    options: dict[str, Any] = field(default_factory=dict)

    # --- totals ---------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return sum(e.n_params for e in self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.n_bytes for e in self.entries)

    @property
    def f16_bytes(self) -> int:
        """Size of the same tensors all in F16: the baseline of the compression ratio."""
        return 2 * self.n_params

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.total_bytes / self.n_params if self.n_params else 0.0

    @property
    def compression_ratio(self) -> float:
        return self.f16_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def fallbacks(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.fallback)

    def entry(self, gguf_name: str) -> PlanEntry:
        for e in self.entries:
            if e.gguf_name == gguf_name:
                return e
        raise KeyError(gguf_name)

    # --- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["entries"] = [e.to_dict() for e in self.entries]
        data["totals"] = {
            "n_params": self.n_params,
            "bytes": self.total_bytes,
            "f16_bytes": self.f16_bytes,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "compression_ratio_vs_f16": round(self.compression_ratio, 4),
            "n_fallbacks": len(self.fallbacks),
        }
        return data

    def to_json(self) -> str:
        """The plan file: the plan and its own hash (so an edit after compile is noticed)."""
        return json.dumps({**self.to_dict(), "sha256": self.sha256()}, indent=1, sort_keys=True)

    def sha256(self) -> str:
        """Hash of the plan's canonical JSON: recorded in the GGUF metadata."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("format_version") != PLAN_FORMAT_VERSION:
            raise PlanError(
                f"plan format version {data.get('format_version')!r} is not supported",
                hint=f"recompile the recipe with this aqrecipe ({__version__})",
            )
        recorded = data.get("sha256")
        data = {k: v for k, v in data.items() if k not in ("totals", "sha256")}
        try:
            entries = tuple(PlanEntry(**{**e, "shape": tuple(e["shape"])}) for e in data.pop("entries"))
            plan = cls(
                entries=entries,
                unused_rules=tuple(data.pop("unused_rules", ())),
                needs_imatrix=tuple(data.pop("needs_imatrix", ())),
                **data,
            )
        except (TypeError, KeyError, AttributeError) as exc:
            raise PlanError(f"malformed plan file: {exc}", hint="recompile the recipe") from None
        if recorded is not None and recorded != plan.sha256():
            raise PlanError(
                "the plan was edited after compile (its sha256 no longer matches its content)",
                hint="recompile the recipe; to apply a hand-edited plan anyway, delete its \"sha256\" line "
                "(it is then still checked against the model tensor by tensor)",
            )
        return plan


def load_plan(path: Path) -> Plan:
    """Read a plan written by ``aqrecipe compile -o plan.json``."""
    try:
        data = json.loads(read_text_bounded(path, kind="plan", what="plan file", error=PlanError))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist", hint="run `aqrecipe compile RECIPE -o plan.json`") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"plan file {path} is not valid JSON: {exc}", hint="recompile the recipe") from None
    except RecursionError:  # a plan is a flat table; deep nesting is hostile, not a plan
        raise PlanError(f"plan file {path} is nested too deeply to be a plan", hint="recompile the recipe") from None
    if not isinstance(data, dict):
        raise PlanError(f"plan file {path} does not hold a JSON object", hint="recompile the recipe")
    return Plan.from_dict(data)


def plan_source(plan: Plan) -> ModelSource:
    """The plan's model, opened as compile opened it (an already quantized GGUF only with the plan's
    ``allow_requantize``)."""
    from aqrecipe.models import open_model

    return open_model(plan.model_path, allow_requantize=bool(plan.options.get("allow_requantize")))
