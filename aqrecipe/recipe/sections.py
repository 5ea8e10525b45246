"""Stage sections of a recipe (``imatrix``, ``super_weights``, ``smoothquant``, ``planner``, ``coherence``)
as typed frozen dataclasses, built by one generic converter.

A section is recipe grammar: its shape, its defaults and its checks live here and in the JSON Schema,
nowhere else. The schema does every check (types, ranges, enumerations, required keys, unknown keys,
``type:`` tags) once, with YAML positions, when the whole recipe is validated; :func:`build_section`
then only converts schema-valid data:

* a dataclass field reads the key of its name, or the key path in its ``keys`` metadata
  (the first of several alternatives that is present), and takes its default when absent;
* a nested dataclass is built the same way, a ``tuple[X, ...]`` from a list, a union of
  dataclasses picks the member whose ``type`` default equals the data's ``type:`` tag;
* ``int`` / ``float`` fields store real ints and floats (the schema accepts ``16.0`` as an integer).

:func:`parse_section` validates one section on its own (same codes, paths such as
``$.smoothquant.alpha``) and builds it; every top-level section class has it as ``from_dict``.
Techniques import their section from here (``aqrecipe.importance`` re-exports ``SuperWeightsSection``).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Union

from aqrecipe.recipe.model import STAGE_SECTIONS

#: Section name -> its dataclass (or a union of dataclasses tagged by ``type:``), filled by :func:`section`.
SECTIONS: dict[str, Any] = {}


def keys(*paths: tuple[str, ...]) -> dict[str, Any]:
    """Field metadata: read the value at the first of ``paths`` (key tuples) present in the mapping."""
    return {"keys": paths}


def section(name: str) -> Any:
    """Class decorator: register ``cls`` as the type of section ``name`` and give it ``from_dict``."""

    def register(cls: type) -> type:
        SECTIONS[name] = cls
        cls.from_dict = classmethod(lambda c, data=None: parse_section(name, data))  # type: ignore[attr-defined]
        return cls

    return register


def parse_section(name: str, data: Mapping[str, Any] | None) -> Any:
    """Validate one section (``None`` = an empty mapping) against its schema and build it.

    Raises :class:`aqrecipe.errors.RecipeError` listing every issue (codes as for a whole recipe).
    """
    from aqrecipe.recipe.issues import recipe_error, sort_issues
    from aqrecipe.recipe.validate import collect_section_issues

    data = {} if data is None else data
    found = collect_section_issues(name, data)
    if found:
        raise recipe_error(sort_issues(found))
    return build_section(name, data)


def build_section(name: str, data: Any) -> Any:
    """The typed section ``name`` from schema-valid ``data``."""
    return _convert(SECTIONS[name], data)


def build_sections(data: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Every stage section present in schema-valid recipe ``data``, typed, in pipeline order."""
    return tuple((name, build_section(name, data[name])) for name in STAGE_SECTIONS if name in data)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _lookup(data: Mapping[str, Any], f: dataclasses.Field) -> tuple[bool, Any]:
    for path in f.metadata.get("keys", ((f.name,),)):
        node: Any = data
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
        else:
            return True, node
    return False, None


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        present, value = _lookup(data, f)
        if present:
            values[f.name] = _convert(hints[f.name], value)
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        classes = [m for m in members if dataclasses.is_dataclass(m)]
        if classes and isinstance(value, Mapping):
            tag = value.get("type")
            return _build(next(c for c in classes if c.__dataclass_fields__["type"].default == tag), value)
        if isinstance(value, (str, bool)):  # float | str: "auto" stays a string
            return value
        numeric = [m for m in members if m in (int, float)]
        return numeric[0](value) if numeric and isinstance(value, (int, float)) else value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v) for v in value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if hint in (int, float) and not isinstance(value, bool):
        return hint(value)
    if hint is bool:
        return bool(value)
    return value


# --- imatrix ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationSource:
    """``imatrix.calibration.source``: ``type`` builtin-wiki | text | jsonl | hf-dataset and its keys."""

    type: str = "builtin-wiki"
    path: str | None = None  # text, jsonl (relative to the recipe file)
    field: str = "text"  # jsonl, hf-dataset
    name: str | None = None  # hf-dataset
    config: str | None = None  # hf-dataset
    split: str = "train"  # hf-dataset


@dataclass(frozen=True)
class CalibrationSection:
    """``imatrix.calibration``: where the text comes from and how many windows of it."""

    source: CalibrationSource = CalibrationSource()
    samples: int = 512
    seq_len: int = 512
    seed: int = 0
    all_experts: bool = False  # MoE: every expert on every token (statistics only)


@dataclass(frozen=True, kw_only=True)
class ImatrixCompute:
    """``imatrix: {type: compute, calibration, save}``."""

    type: str = "compute"
    calibration: CalibrationSection = CalibrationSection()
    save: str | None = None


@dataclass(frozen=True, kw_only=True)
class ImatrixFile:
    """``imatrix: {type: file, path, allow_partial}``."""

    type: str = "file"
    path: str
    allow_partial: bool = False


ImatrixSection = Union[ImatrixCompute, ImatrixFile]
SECTIONS["imatrix"] = ImatrixSection


# --- super_weights ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectSpec:
    """How super weights are found (``super_weights.detect``; the schema describes each field)."""

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


@dataclass(frozen=True)
class ProtectSpec:
    """How found super weights are protected (``super_weights.protect``)."""

    type: str = "raise-tensor"
    tensor_type: str = "Q8_0"
    imatrix_boost: float = 100.0
    restore_values: bool = True


@section("super_weights")
@dataclass(frozen=True)
class SuperWeightsSection:
    """``super_weights: {enabled, detect: {...}, protect: {...}}``."""

    enabled: bool = True
    detect: DetectSpec = field(default_factory=DetectSpec)
    protect: ProtectSpec = field(default_factory=ProtectSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- smoothquant --------------------------------------------------------------------------------------
DEFAULT_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class GroupSpec:
    """An explicit smoothing group (patterns) or an auto-mapping override (no linears)."""

    norm: str
    linears: tuple[str, ...] = ()
    alpha: float | None = None


@section("smoothquant")
@dataclass(frozen=True)
class SmoothQuantConfig:
    """The ``smoothquant:`` section, with ``mappings`` / ``activations`` / ``output`` flattened to their
    ``type`` (and ``groups``: explicit groups, or the overrides of ``mappings: {type: auto}``)."""

    enabled: bool = True
    alpha: float | str = 0.5
    alpha_grid: tuple[float, ...] = DEFAULT_GRID
    auto_samples: int = 16
    mappings: str = field(default="auto", metadata=keys(("mappings", "type")))
    groups: tuple[GroupSpec, ...] = field(default=(), metadata=keys(("mappings", "groups"),
                                                                      ("mappings", "overrides")))
    activations: str = field(default="dynamic-per-token", metadata=keys(("activations", "type")))
    output: str = field(default="compressed-tensors", metadata=keys(("output", "type")))
    output_path: str | None = field(default=None, metadata=keys(("output", "path")))
    problem_threshold: float = 0.05

    @property
    def is_auto(self) -> bool:
        return self.alpha == "auto"

    def to_dict(self) -> dict[str, Any]:
        """The section as it would appear in a recipe (round-trips through ``from_dict``)."""
        if self.mappings == "explicit":
            maps: dict[str, Any] = {"type": "explicit", "groups": [
                {"norm": g.norm, "linears": list(g.linears), **({"alpha": g.alpha} if g.alpha is not None else {})}
                for g in self.groups]}
        else:
            maps = {"type": "auto"}
            if self.groups:
                maps["overrides"] = [{"norm": g.norm, "alpha": g.alpha} for g in self.groups]
        out: dict[str, Any] = {"type": self.output}
        if self.output_path is not None:
            out["path"] = self.output_path
        return {
            "enabled": self.enabled, "alpha": self.alpha, "alpha_grid": list(self.alpha_grid),
            "auto_samples": self.auto_samples, "mappings": maps,
            "activations": {"type": self.activations}, "output": out,
            "problem_threshold": self.problem_threshold,
        }


# --- planner ------------------------------------------------------------------------------------------
DEFAULT_CANDIDATES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")


@dataclass(frozen=True)
class MeasurementSpec:
    """How sensitivities are measured.

    ``fisher`` (default): every (tensor, type)'s KLD estimated to second order from the diagonal
    Fisher information of the model's own predictions (one forward and backward pass per window,
    :mod:`aqrecipe.planner.fisher`), optionally corrected per type by ``calibrate_tensors`` tensors
    (x up to 5 types each) measured exactly; tensors a probe cannot swap (merged experts) use the
    proxy, calibrated on the Fisher estimates. ``proxy``: the imatrix-weighted relative round-trip
    error, calibrated per role on the measured tensors. ``kld``: every (tensor, type) measured exactly
    (one forward pass each).

    ``calibrate_tensors`` unset: 0 for fisher (on the float demo model its plans measured 0.601x
    llama.cpp's KLD at Q4_K_M's size without probes, 0.648x with 8 tensors' probes, in 45 % of the
    time; BENCHMARKS.md), 8 for proxy, which needs the probes to be scaled to KLD at all.

    ``sample_rows``: the proxy and the Fisher estimate of a tensor with more rows than this (per
    expert of a merged-expert tensor) come from that many evenly spaced rows (0: every row); the
    Fisher sum is scaled to the whole tensor by the rows' share of ``Σ S ⊙ W²`` (a ratio estimate,
    like the proxy itself).
    """

    type: str = "fisher"
    samples: int = 8
    seq_len: int = 128
    calibrate_tensors: int | None = None  # x up to 5 types each; None: the type's default (probed_tensors)
    seed: int = 0
    sample_rows: int = 512

    @property
    def probed_tensors(self) -> int:
        """How many tensors the KLD probes measure: ``calibrate_tensors``, or 0 for fisher and 8 for proxy."""
        if self.calibrate_tensors is not None:
            return self.calibrate_tensors
        return 0 if self.type == "fisher" else 8


@section("planner")
@dataclass(frozen=True)
class PlannerSpec:
    """``planner: {type: budget, target_bpw | target_bytes, max_kld, candidates, measurement, validate}``."""

    type: str = "budget"
    target_bpw: float | None = None
    target_bytes: int | None = None
    max_kld: float | None = None
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    measurement: MeasurementSpec = MeasurementSpec()
    validate: bool = True  # measure plan vs the recipe's own types on held-out windows; keep the better

    def budget_bytes(self, n_params: int) -> int | None:
        """The size target in bytes (``target_bpw`` counts every parameter, like a plan's bpw)."""
        if self.target_bytes is not None:
            return int(self.target_bytes)
        if self.target_bpw is not None:
            return int(self.target_bpw * n_params / 8)
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        return d


# --- coherence ----------------------------------------------------------------------------------------
@section("coherence")
@dataclass(frozen=True)
class CoherenceSpec:
    """Thresholds of the coherence checks (the recipe's ``coherence`` section)."""

    enabled: bool | None = None  # None: automatic (on for ultra-low-bit plans)
    max_ppl_ratio: float = 2.0
    min_top1: float = 0.5
    max_loop_share: float = 0.5  # share of prompts whose generation loops
    strict: bool = False  # a failed check makes apply exit with code 1
    chunks: int = 4
    context: int = 512
    new_tokens: int = 48

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


assert set(SECTIONS) == set(STAGE_SECTIONS), "every stage section has one registered type"
