"""The ``smoothquant:`` recipe section: frozen config, JSON Schema fragment, parsing.

Example::

    smoothquant:
      alpha: 0.5                 # number in [0, 1] or "auto"
      mappings: {type: auto}     # or {type: explicit, groups: [{norm: ..., linears: [...], alpha: 0.6}]}
      activations: {type: dynamic-per-token}   # or {type: static-per-tensor}
      output: {type: compressed-tensors, path: out/w8a8}   # or {type: gguf-q8_0, path: out/x.gguf}
      problem_threshold: 0.05
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aqrecipe.errors import AqrecipeError
from aqrecipe.recipe.schema import section_schema

DEFAULT_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class SmoothQuantError(AqrecipeError):
    """A SmoothQuant setting, mapping or result is invalid."""

    code = "AQ1100"


#: The ``smoothquant:`` section of ``aqrecipe/data/recipe.schema.json``.
SCHEMA_FRAGMENT: dict[str, Any] = section_schema("smoothquant")


@dataclass(frozen=True)
class GroupSpec:
    """An explicit smoothing group (patterns) or an auto-mapping override (no linears)."""

    norm: str
    linears: tuple[str, ...] = ()
    alpha: float | None = None


@dataclass(frozen=True)
class SmoothQuantConfig:
    """The parsed ``smoothquant:`` section (see :data:`SCHEMA_FRAGMENT`)."""

    enabled: bool = True
    alpha: float | str = 0.5
    alpha_grid: tuple[float, ...] = DEFAULT_GRID
    auto_samples: int = 16
    mappings: str = "auto"
    groups: tuple[GroupSpec, ...] = ()  # explicit groups, or overrides when mappings == "auto"
    activations: str = "dynamic-per-token"
    output: str = "compressed-tensors"
    output_path: str | None = None
    problem_threshold: float = 0.05

    @property
    def is_auto(self) -> bool:
        return self.alpha == "auto"

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SmoothQuantConfig:
        """Validate ``d`` against :data:`SCHEMA_FRAGMENT` and build the config."""
        d = dict(d or {})
        validate_section(d)
        maps = d.get("mappings") or {"type": "auto"}
        items = maps.get("groups") if maps["type"] == "explicit" else maps.get("overrides", [])
        groups = tuple(GroupSpec(g["norm"], tuple(g.get("linears", ())), g.get("alpha")) for g in items or [])
        out = d.get("output") or {}
        return cls(
            enabled=bool(d.get("enabled", True)),
            alpha=d["alpha"] if d.get("alpha") == "auto" else float(d.get("alpha", 0.5)),
            alpha_grid=tuple(float(a) for a in d.get("alpha_grid", DEFAULT_GRID)),
            auto_samples=int(d.get("auto_samples", 16)),
            mappings=maps["type"],
            groups=groups,
            activations=(d.get("activations") or {}).get("type", "dynamic-per-token"),
            output=out.get("type", "compressed-tensors"),
            output_path=out.get("path"),
            problem_threshold=float(d.get("problem_threshold", 0.05)),
        )

    def to_dict(self) -> dict[str, Any]:
        """The section as it would appear in a recipe (round-trips through :meth:`from_dict`)."""
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


def validate_section(d: dict[str, Any]) -> None:
    """SmoothQuantError listing every schema violation of the section ``d``."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA_FRAGMENT)
    errors = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"smoothquant.{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                 for e in errors]
        raise SmoothQuantError("invalid smoothquant section: " + "; ".join(lines),
                               hint="alpha is a number in [0, 1] or 'auto'; see SCHEMA_FRAGMENT for the keys")
