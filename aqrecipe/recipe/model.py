"""The validated recipe as frozen dataclasses, with defaults applied.

Instances are built by :mod:`aqrecipe.recipe.loader` only after validation passed.
``source_path``, ``source_text`` and ``positions`` are provenance: they do not take
part in equality, so a recipe read back from its own dump compares equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aqrecipe.recipe.issues import RecipeIssue
from aqrecipe.recipe.paths import Key, format_path, parse_path
from aqrecipe.recipe.rounding import RTN, Rounding
from aqrecipe.recipe.yaml_positions import PositionIndex

RuleKind = Literal["exact", "regex", "glob", "role"]
REGEX_PREFIX = "re:"
ROLE_PREFIX = "role:"  # a rule's ``role: experts`` is the pattern ``role:experts`` (also in --set)
GLOB_CHARS = frozenset("*?[")


def rule_kind(match: str) -> RuleKind:
    """``re:...`` is a regex, ``role:...`` a role, text with any of ``*?[`` a glob, anything else an exact name."""
    if match.startswith(REGEX_PREFIX):
        return "regex"
    if match.startswith(ROLE_PREFIX):
        return "role"
    if GLOB_CHARS & set(match):
        return "glob"
    return "exact"


@dataclass(frozen=True)
class OutputSpec:
    """Output container and (optional) path as written in the recipe."""

    format: str = "gguf"
    path: str | None = None
    dtype: str = "auto"  # safetensors only: F32 | F16 | BF16, auto = the source's

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format}
        if self.path is not None:
            out["path"] = self.path
        if self.dtype != "auto":
            out["dtype"] = self.dtype
        return out


@dataclass(frozen=True)
class TensorRule:
    """One rule; ``pattern`` has the ``re:`` / ``role:`` prefix stripped for regex and role rules."""

    pattern: str
    type: str
    kind: RuleKind
    index: int  # position in quantization.rules (0-based)
    rounding: Rounding | None = None  # the rule's own rounding (None: quantization.rounding)

    @property
    def match_text(self) -> str:
        """The pattern as written in the recipe (``re:`` prefix restored; ``role:`` + a role rule's role)."""
        prefix = {"regex": REGEX_PREFIX, "role": ROLE_PREFIX}.get(self.kind, "")
        return prefix + self.pattern

    @property
    def regex(self) -> Any:
        """The linear-time matcher of a ``regex`` rule (``search``/``fullmatch`` as a compiled ``re``
        pattern; :func:`aqrecipe.recipe.patterns.compile_rule_regex`, cached), else None."""
        if self.kind != "regex":
            return None
        from aqrecipe.recipe.patterns import compile_rule_regex  # the one matcher; imported only when asked

        return compile_rule_regex(self.pattern, f"rules[{self.index}] {self.match_text!r}")

    @property
    def json_path(self) -> str:
        """Where the rule sits in the recipe, e.g. ``$.quantization.rules[2]``."""
        return format_path(["quantization", "rules", self.index])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = ({"role": self.pattern} if self.kind == "role" else {"match": self.match_text})
        out["type"] = self.type
        if self.rounding is not None:
            out["rounding"] = self.rounding.to_dict()
        return out


#: Top-level sections owned by pipeline stages, in pipeline order.
STAGE_SECTIONS: tuple[str, ...] = ("imatrix", "super_weights", "smoothquant", "planner", "coherence")


@dataclass(frozen=True)
class QuantizationSpec:
    """Mixture and/or default type, refined by rules (in recipe order)."""

    mixture: str | None = None
    default: str | None = None
    rules: tuple[TensorRule, ...] = ()
    allow_without_imatrix: bool = False
    ternary_scale: str = "absmax"
    rounding: Rounding = RTN

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mixture is not None:
            out["mixture"] = self.mixture
        if self.default is not None:
            out["default"] = self.default
        out["rules"] = [r.to_dict() for r in self.rules]
        if self.allow_without_imatrix:
            out["allow_without_imatrix"] = True
        if self.ternary_scale != "absmax":
            out["ternary_scale"] = self.ternary_scale
        if self.rounding != RTN:
            out["rounding"] = self.rounding.to_dict()
        return out


@dataclass(frozen=True)
class EvaluationSpec:
    """Quality measurement settings; ``text=None`` means the built-in Wikipedia split."""

    enabled: bool = True
    text: str | None = None
    chunks: int = 16
    context: int = 512

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "text": self.text, "chunks": self.chunks, "context": self.context}


@dataclass(frozen=True)
class Recipe:
    """A validated recipe (version 1)."""

    version: int
    name: str | None
    description: str | None
    model: str
    output: OutputSpec
    quantization: QuantizationSpec
    evaluation: EvaluationSpec
    #: Stage sections (imatrix, coherence, ...) as validated data; each stage reads its own.
    stages: tuple[tuple[str, Any], ...] = ()
    #: The same sections typed (aqrecipe.recipe.sections), built once by the loader; derived from ``stages``.
    sections: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)
    source_path: Path | None = field(default=None, compare=False)
    source_text: str | None = field(default=None, compare=False, repr=False)
    positions: PositionIndex | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable; parsing its YAML dump gives an equal Recipe."""
        out: dict[str, Any] = {"version": self.version}
        if self.name is not None:
            out["name"] = self.name
        if self.description is not None:
            out["description"] = self.description
        out["model"] = self.model
        out["output"] = self.output.to_dict()
        out["quantization"] = self.quantization.to_dict()
        out["evaluation"] = self.evaluation.to_dict()
        out.update(self.stages)
        return out

    def stage(self, name: str) -> Any:
        """The validated data of one stage section as written (``imatrix``, ``coherence``, ...), or None."""
        return dict(self.stages).get(name)

    def section(self, name: str) -> Any:
        """One stage section as its typed frozen dataclass (aqrecipe.recipe.sections), or None when absent."""
        if name not in STAGE_SECTIONS:
            raise KeyError(f"no stage section {name!r} (one of {', '.join(STAGE_SECTIONS)})")
        return dict(self.sections).get(name)

    @property
    def base_dir(self) -> Path:
        """Folder relative paths are resolved against: the recipe's folder, else the cwd."""
        return self.source_path.parent if self.source_path is not None else Path.cwd()

    def resolve_path(self, path: str | os.PathLike[str]) -> Path:
        """``path`` made absolute against :attr:`base_dir` (``~`` expanded)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def position_of(self, json_path: str | tuple[Key, ...], *, nearest: bool = False) -> tuple[int, int] | None:
        """1-based (line, column) of the value at ``json_path``; None when unknown.

        With ``nearest=True`` a path that is not in the YAML (a defaulted value)
        gives the position of its deepest ancestor that is.
        """
        if self.positions is None:
            return None
        return self.positions.value_position(parse_path(json_path), nearest=nearest)

    def issue_at(self, json_path: str | tuple[Key, ...], code: str, message: str, *, value: Any = None,
                 allowed: Any = None, suggestion: str | None = None) -> RecipeIssue:
        """A RecipeIssue pointing at ``json_path`` (for model-aware checks such as R201 / R202)."""
        keys = parse_path(json_path)
        line, column = self.position_of(keys, nearest=True) or (None, None)
        if isinstance(allowed, list):
            allowed = tuple(allowed)
        source = str(self.source_path) if self.source_path is not None else None
        return RecipeIssue(code, line, column, format_path(keys), message, value, allowed, suggestion, source)


def _tensor_rule(index: int, rule: dict[str, Any]) -> TensorRule:
    match = rule["match"] if "match" in rule else ROLE_PREFIX + rule["role"]
    kind = rule_kind(match)
    prefix = {"regex": REGEX_PREFIX, "role": ROLE_PREFIX}.get(kind, "")
    rounding = Rounding.from_dict(rule["rounding"]) if "rounding" in rule else None
    return TensorRule(pattern=match[len(prefix):], type=rule["type"], kind=kind, index=index, rounding=rounding)


def build_recipe(data: dict[str, Any], *, source_path: Path | None = None, source_text: str | None = None,
                 positions: PositionIndex | None = None, sections: tuple[tuple[str, Any], ...] = ()) -> Recipe:
    """Recipe from schema-valid ``data``, filling defaults (the caller validated ``data``);
    ``sections``: the typed stage sections (:func:`aqrecipe.recipe.sections.build_sections`)."""
    out = data.get("output", {})
    quant = data["quantization"]
    ev = data.get("evaluation", {})
    rules = tuple(_tensor_rule(i, r) for i, r in enumerate(quant.get("rules", [])))
    defaults = EvaluationSpec()
    return Recipe(
        version=int(data["version"]),
        name=data.get("name"),
        description=data.get("description"),
        model=data["model"],
        output=OutputSpec(format=out.get("format", "gguf"), path=out.get("path"), dtype=out.get("dtype", "auto")),
        quantization=QuantizationSpec(mixture=quant.get("mixture"), default=quant.get("default"), rules=rules,
                                      allow_without_imatrix=bool(quant.get("allow_without_imatrix", False)),
                                      ternary_scale=quant.get("ternary_scale", "absmax"),
                                      rounding=Rounding.from_dict(quant.get("rounding"))),
        evaluation=EvaluationSpec(
            enabled=bool(ev.get("enabled", defaults.enabled)),
            text=ev.get("text", defaults.text),
            # the schema accepts 16.0 as an integer; store a real int
            chunks=int(ev.get("chunks", defaults.chunks)),
            context=int(ev.get("context", defaults.context)),
        ),
        stages=tuple((name, data[name]) for name in STAGE_SECTIONS if name in data),
        sections=sections,
        source_path=source_path,
        source_text=source_text,
        positions=positions,
    )
