"""The importance-matrix stage of ``apply``: compute or load an imatrix, check it fits.

Types llama.cpp refuses without an importance matrix (IQ2_XXS, IQ1_S, IQ1_M)
are refused here too unless the recipe says ``allow_without_imatrix: true``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from aqrecipe.errors import ImatrixError
from aqrecipe.recipe.sections import CalibrationSection

if TYPE_CHECKING:
    from aqrecipe.imatrix import ImatrixData
    from aqrecipe.plan import Plan
    from aqrecipe.recipe import Recipe

log = logging.getLogger(__name__)

HOW_TO_GET_ONE = (
    "add 'imatrix: {type: compute}' to the recipe (computed from the built-in Wikipedia sample), "
    "or run `aqrecipe imatrix compute MODEL -o imatrix.gguf` and pass --imatrix imatrix.gguf "
    "(llama.cpp's llama-imatrix files work too); 'quantization.allow_without_imatrix: true' "
    "overrides the refusal at a cost in quality"
)


def calibration_spec(section: CalibrationSection | None, recipe: Recipe | None = None) -> Any:
    """The recipe's ``imatrix.calibration`` section as a :class:`~aqrecipe.calibration.data.CalibrationSpec`
    (its path resolved against the recipe's folder)."""
    from aqrecipe.calibration.data import CalibrationSpec

    section = section or CalibrationSection()
    src = section.source
    path = str(recipe.resolve_path(src.path)) if src.path is not None and recipe is not None else src.path
    return CalibrationSpec(source=src.type, path=path, field=src.field, name=src.name, config=src.config,
                           split=src.split, samples=section.samples, seq_len=section.seq_len, seed=section.seed,
                           all_experts=section.all_experts)


def resolve_imatrix(
    plan: Plan,
    recipe: Recipe | None,
    *,
    imatrix_path: Path | None = None,
    work_dir: Path | None = None,
    restart: bool = False,
    quiet: bool = False,
    max_memory: int | None = None,
    observers: Sequence[Any] = (),
    work_name: str = "imatrix",
) -> ImatrixData | None:
    """The imatrix this run packs with: ``--imatrix`` beats the recipe's section.

    ``max_memory`` (bytes) sizes a computed one's activation cache and batches; ``observers`` ride
    a computed one's calibration pass, whose checkpoints go to ``work_dir / work_name``.
    Raises :class:`ImatrixError` when the plan needs one and none is given.
    """
    from aqrecipe.imatrix import check_against_model, compute_imatrix, load_imatrix
    from aqrecipe.plan.model import plan_source

    section = recipe.section("imatrix") if recipe is not None else None
    allow_partial = section is not None and section.type == "file" and section.allow_partial
    data = None
    if imatrix_path is not None:
        data = load_imatrix(imatrix_path)
    elif section is not None and section.type == "file":
        data = load_imatrix(recipe.resolve_path(section.path))
    elif section is not None and section.type == "compute":
        from aqrecipe.calibration.runner import RunnerOptions
        from aqrecipe.calibration.memory import limited_options

        save = recipe.resolve_path(section.save) if section.save else None
        spec = calibration_spec(section.calibration, recipe)
        data = compute_imatrix(
            plan.model_path,
            spec,
            work_dir=work_dir / work_name if work_dir else None,
            output=save,
            restart=restart,
            quiet=quiet,
            options=limited_options(RunnerOptions(), plan.model_path, spec, max_memory),
            observers=observers,
        )
    if data is not None:
        check_against_model(data, plan_source(plan), allow_partial=allow_partial)
        return data
    allowed = recipe is not None and recipe.quantization.allow_without_imatrix
    if plan.needs_imatrix and not allowed:
        names = ", ".join(plan.needs_imatrix[:4]) + (" ..." if len(plan.needs_imatrix) > 4 else "")
        raise ImatrixError(
            f"{len(plan.needs_imatrix)} tensors use IQ2_XXS/IQ1_S/IQ1_M, which need an importance matrix "
            f"({names})",
            hint=HOW_TO_GET_ONE,
        )
    return None
