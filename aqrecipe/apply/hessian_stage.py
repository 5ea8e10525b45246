"""The calibration stage of ``apply`` when the plan has gptq entries: imatrix and Hessians, one pass.

A recipe that computes its imatrix gets the Hessians from that same layer-by-layer pass (the
:class:`~aqrecipe.calibration.hessians.HessianObserver` rides it, checkpointed in
``<work>/imatrix-gptq``). With an imatrix file (``--imatrix`` or ``imatrix: {type: file}``) the
file is the packer's importance, and one calibration pass over the recipe's calibration text (the
built-in Wikipedia train split by default) collects the Hessians (``<work>/hessians``). Plans without
gptq entries run the imatrix stage as before, so their work folders and bytes are unchanged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aqrecipe.apply.imatrix_stage import calibration_spec, resolve_imatrix
from aqrecipe.errors import OutputError

if TYPE_CHECKING:
    from aqrecipe.calibration.hessians import HessianStore
    from aqrecipe.imatrix import ImatrixData
    from aqrecipe.plan import Plan
    from aqrecipe.recipe import Recipe

log = logging.getLogger(__name__)

#: Work sub-folders: a gptq run's imatrix pass (other observers than an rtn run's, so its own
#: checkpoints), and the Hessian-only pass next to an imatrix file.
GPTQ_IMATRIX_WORK = "imatrix-gptq"
HESSIAN_WORK = "hessians"


def gptq_entries(plan: Plan) -> list[str]:
    """The tensors the plan rounds with gptq."""
    return [e.gguf_name for e in plan.entries if e.rounding is not None]


def resolve_calibration(
    plan: Plan,
    recipe: Recipe | None,
    *,
    imatrix_path: Path | None = None,
    work_dir: Path | None = None,
    restart: bool = False,
    quiet: bool = False,
    max_memory: int | None = None,
) -> tuple[ImatrixData | None, HessianStore | None, dict[str, Any]]:
    """The imatrix, the Hessians (None when no entry is gptq) and what to report about them."""
    names = gptq_entries(plan)
    if not names:
        imatrix = resolve_imatrix(plan, recipe, imatrix_path=imatrix_path, work_dir=work_dir, restart=restart,
                                  quiet=quiet, max_memory=max_memory)
        return imatrix, None, {}
    from aqrecipe.calibration.hessians import HessianObserver

    if work_dir is None:
        raise OutputError("gptq rounding needs a work folder for its Hessians", hint="pass --work-dir")
    section = recipe.section("imatrix") if recipe is not None else None
    shared = imatrix_path is None and section is not None and section.type == "compute"
    folder = work_dir / (GPTQ_IMATRIX_WORK if shared else HESSIAN_WORK)
    observer = HessianObserver(folder)
    t0 = time.perf_counter()
    if shared:
        imatrix = resolve_imatrix(plan, recipe, work_dir=work_dir, restart=restart, quiet=quiet,
                                  max_memory=max_memory, observers=[observer], work_name=GPTQ_IMATRIX_WORK)
    else:
        imatrix = resolve_imatrix(plan, recipe, imatrix_path=imatrix_path, work_dir=work_dir, restart=restart,
                                  quiet=quiet, max_memory=max_memory)
        _hessian_pass(plan, recipe, section, folder, observer, restart=restart, quiet=quiet, max_memory=max_memory)
    observer.finish()
    store = observer.store()
    report = {"rounding": {"gptq_tensors": len(names), "hessians": len(store),
                           "hessian_pass": "shared with the imatrix" if shared else "separate",
                           "hessian_peak_bytes": observer.peak_bytes,
                           "calibration_seconds": round(time.perf_counter() - t0, 3)}}
    log.info("gptq: %d tensors, Hessians of %d inputs (peak %.1f MiB in memory)", len(names), len(store),
             observer.peak_bytes / 2**20)
    return imatrix, store, report


def _hessian_pass(plan: Plan, recipe: Recipe | None, section: Any, folder: Path, observer: Any, *,
                  restart: bool, quiet: bool, max_memory: int | None) -> None:
    """One calibration pass that only feeds ``observer`` (the imatrix came from a file)."""
    from aqrecipe.calibration.memory import limited_options
    from aqrecipe.calibration.runner import RunnerOptions
    from aqrecipe.imatrix.compute import calibrate

    spec = calibration_spec(getattr(section, "calibration", None), recipe)
    calibrate(plan.model_path, spec, folder, restart=restart, quiet=quiet, observers=[observer],
              options=limited_options(RunnerOptions(), plan.model_path, spec, max_memory), stage="gptq calibration")
