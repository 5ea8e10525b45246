"""Guard rails of one ``apply`` run: the work-folder lock and a crash-safe output.

The whole run holds ``<work_dir>/.lock`` (the same
:class:`~aqrecipe.calibration.checkpoint.FolderLock` the calibration checkpoints
use), so two applies on one work folder never interleave: the second fails at
once, naming the first. The kernel drops the lock when a process dies.

The output is built in ``<work_dir>/output/`` and moved to its destination only
once complete and fsynced. A run killed at any instant (SIGKILL included)
therefore leaves the destination as it was, absent or the previous complete
file, and no temp file beside it: its debris stays in the work folder, where
the next run (holding the lock, so nothing there is in use) removes it. When the
work folder is on another filesystem, the finished file is copied beside the
destination under fileio's temp name and renamed; a stale copy of a killed run
is removed by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from aqrecipe._testhooks import reached
from aqrecipe.apply.options import ApplyOptions, default_work_dir, wants_folder
from aqrecipe.calibration.checkpoint import LOCK, FolderLock
from aqrecipe.formats.fileio import _fsync_folder, atomic_path, check_output_folder, staged_for
from aqrecipe.formats.paths import Write, check_write_targets, model_reads
from aqrecipe.output.safetensors import check_folder_output
from aqrecipe.plan import Plan
from aqrecipe.recipe import Recipe

log = logging.getLogger(__name__)


def output_kind(recipe: Recipe | None, options: ApplyOptions) -> str:
    """What the run writes at its destination: "file" (a GGUF), "folder" (an HF folder) or "none"."""
    section = recipe.section("smoothquant") if recipe is not None else None
    if section is not None:  # W8A8: compressed-tensors (a folder), a Q8_0 GGUF, or nothing
        return {"gguf-q8_0": "file", "none": "none"}.get(section.output, "folder")
    return "folder" if wants_folder(recipe, options) else "file"


def check_run_paths(plan: Plan, recipe: Recipe | None, dest: Path, options: ApplyOptions) -> None:
    """OutputError unless no path this run writes is one it reads, another output or a special file.

    Writes: the output, ``--report``, the work folder and the recipe's ``imatrix.save``.
    Reads: :func:`recipe_reads`, the plan file and ``--imatrix``.
    """
    kind = output_kind(recipe, options)
    writes: dict[str, Path | Write | None] = {
        "output": None if kind == "none" else Write(Path(dest), kind),
        "report (--report)": options.report_path,
        "work folder": Write(Path(options.work_dir or default_work_dir(Path(dest))), "work"),
    }
    section = recipe.section("imatrix") if recipe is not None else None
    if section is not None and section.type == "compute" and section.save and options.imatrix_path is None:
        writes["imatrix save path (imatrix.save)"] = recipe.resolve_path(section.save)
    reads = {**recipe_reads(recipe, plan.model_path), "plan": options.plan_path,
             "imatrix (--imatrix)": options.imatrix_path}
    check_write_targets(writes, reads)


def recipe_reads(recipe: Recipe | None, model_path: str | os.PathLike[str]) -> dict[str, Path | None]:
    """The files behind a recipe, by role: the model's, the recipe file and every input file it names
    (also one a run skips, such as the evaluation text under --no-eval: it is still the user's file)."""
    from aqrecipe.apply.preflight import named_inputs

    reads: dict[str, Path | None] = {**model_reads(model_path),
                                     "recipe": recipe.source_path if recipe is not None else None}
    for f in named_inputs(recipe) if recipe is not None else ():
        reads[f"{f.what} ({f.where.removeprefix('$.')})"] = f.path
    return reads


def check_destination(dest: Path, recipe: Recipe | None, options: ApplyOptions) -> None:
    """OutputError unless ``dest`` (and ``options.report_path``) can be written; creates nothing that stays.

    ``dest`` may be a folder only for folder outputs (safetensors, compressed-tensors).
    """
    kind = output_kind(recipe, options)
    if kind != "none":
        check_output_folder(dest, probe=True, folder_ok=kind == "folder")
    if kind == "folder":
        check_folder_output(dest)
    if options.report_path is not None:
        check_output_folder(Path(options.report_path))


@contextlib.contextmanager
def locked_work_dir(work_dir: Path) -> Iterator[FolderLock]:
    """Hold ``work_dir``'s lock for the block; :class:`ResumeError` when another run has it.

    A work folder left with nothing to resume from (a plain quantization) is removed
    afterwards, with the folders this call created for it.
    """
    work_dir = Path(work_dir)
    created = [p for p in (work_dir, *work_dir.parents) if not p.exists()]
    lock = FolderLock(work_dir)
    try:
        yield lock
    finally:
        try:
            _tidy(work_dir, created)
        finally:
            lock.release()


def _tidy(work_dir: Path, created: list[Path]) -> None:
    """Remove the lock, an empty staging folder and the folders we created, if nothing else is there."""
    with contextlib.suppress(OSError):
        (work_dir / "output").rmdir()
    if [p.name for p in work_dir.iterdir()] != [LOCK]:
        return
    (work_dir / LOCK).unlink()  # still locked: a run that opened it meanwhile sees it gone and retries
    for folder in created:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def staged_output(dest: Path, work_dir: Path) -> Iterator[Path]:
    """Yield the path to write the complete output file to; on success it becomes ``dest``.

    Call with ``work_dir``'s lock held.
    """
    dest = Path(dest)
    staging = Path(work_dir) / "output"
    staging.mkdir(parents=True, exist_ok=True)
    for stale in sorted(staging.iterdir()):  # left by a killed run
        if stale.is_file():
            stale.unlink()
    remove_stale_temps(dest)
    staged = staging / dest.name
    try:
        with staged_for(staged, dest):  # a full disk names the user's path, not the staging folder's
            yield staged
        reached("publish")
        try:
            os.replace(staged, dest)
            _fsync_folder(dest.parent)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with atomic_path(dest) as tmp:  # another filesystem: copy, then rename beside dest
                shutil.copyfile(staged, tmp)
            staged.unlink()
    except BaseException:
        # an error, Ctrl-C or SIGTERM (cli.termination) before the output was published: the staged
        # file is of no use to the next run, and the work folder's tidy-up only removes an empty staging
        staged.unlink(missing_ok=True)
        raise
    reached("done")


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove ``<dest>.tmp-<pid>`` files whose process is gone (a killed run's partial output)."""
    removed = []
    for tmp in sorted(Path(dest).parent.glob(f"{Path(dest).name}.tmp-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
            log.info("removed %s, left by a killed run", tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
