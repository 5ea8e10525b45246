"""``aqrecipe quantize MODEL --type T``: the flag shortcut, expressed as a recipe.

Every shortcut run is an ordinary recipe underneath, so ``--emit-recipe``
prints exactly what ran and a user can check it into their repo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from aqrecipe.quant.blocktypes import TYPE_NAMES
from aqrecipe.errors import PlanError
from aqrecipe.plan import MIXTURES, parse_set_option
from aqrecipe.recipe import Recipe, recipe_from_dict


def quantization_section(type_name: str, set_options: Sequence[str] = ()) -> dict[str, Any]:
    """``--type`` as a recipe section: llama.cpp file types are mixtures, other names a uniform type."""
    name = type_name.strip().upper()
    if name in MIXTURES:
        section: dict[str, Any] = {"mixture": name}
    elif name in TYPE_NAMES:
        section = {"default": name}
    else:
        raise PlanError(
            f"unknown --type {type_name!r}",
            hint=f"llama.cpp file types: {', '.join(MIXTURES)}; block types: {', '.join(TYPE_NAMES)}",
        )
    rules = [parse_set_option(s) for s in set_options]
    if rules:
        section["rules"] = [{"match": r.pattern, "type": r.type} for r in rules]
    return section


def _model_name(model: str) -> str:
    """The recipe's name stem: the folder's name, or a GGUF file's name without .gguf."""
    path = Path(model)
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def shortcut_recipe(
    model: str,
    type_name: str,
    *,
    set_options: Sequence[str] = (),
    output: str | None = None,
    imatrix: str | None = None,
    protect_super_weights: bool = False,
    target_bpw: float | None = None,
    rounding: str = "rtn",
) -> Recipe:
    """The recipe equivalent to ``quantize MODEL --type T [--set P=T ...] [--imatrix F] [-o OUT]``.

    ``rounding="gptq"`` (``--rounding gptq``) sets ``quantization.rounding: {type: gptq}``; its
    Hessians come from a calibration pass, which computes the imatrix too unless ``imatrix`` is given.
    """
    model_ref = model if model == "demo" else str(Path(model).resolve())
    data: dict[str, Any] = {
        "version": 1,
        "name": f"{_model_name(model)}-{type_name.upper()}",
        "model": model_ref,
        "quantization": quantization_section(type_name, set_options),
        "evaluation": {"enabled": False},  # like llama-quantize; --eval turns it on
    }
    if rounding != "rtn":
        data["quantization"]["rounding"] = {"type": rounding}
    if imatrix:
        data["imatrix"] = {"type": "file", "path": str(Path(imatrix).resolve())}
    elif protect_super_weights or target_bpw is not None or rounding != "rtn":
        data["imatrix"] = {"type": "compute"}  # these read the importance matrix (gptq: its calibration pass)
    if protect_super_weights:
        data["super_weights"] = {"detect": {"type": "combined"}, "protect": {"type": "raise-tensor"}}
    if target_bpw is not None:
        data["planner"] = {"type": "budget", "target_bpw": target_bpw}
    if output:
        data["output"] = {"format": "gguf", "path": str(Path(output).resolve())}
    return recipe_from_dict(data)
