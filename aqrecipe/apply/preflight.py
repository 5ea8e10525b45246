"""The input files a recipe names, checked before any work.

``apply`` checks every file its run will read (the imatrix, the calibration
text or JSON-lines file, the evaluation text) before it takes the work-folder
lock or packs a tensor, so a wrong path costs seconds, not a finished GGUF.
``aqrecipe validate`` reports the same files as positioned recipe issues
(R203 imatrix, R204 calibration data, R205 evaluation text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aqrecipe.errors import ImatrixError
from aqrecipe.recipe.issues import CALIBRATION_FILE_NOT_FOUND, EVALUATION_FILE_NOT_FOUND, IMATRIX_FILE_NOT_FOUND

if TYPE_CHECKING:
    from aqrecipe.apply.options import ApplyOptions
    from aqrecipe.recipe import Recipe, RecipeIssue

RELATIVE = "a recipe's paths are relative to the recipe file"


@dataclass(frozen=True)
class InputFile:
    """One file a run reads: what it is, where it is named, and where it resolves to."""

    kind: str  # "imatrix" | "text" | "jsonl" (calibration) | "evaluation"
    where: str  # the recipe's JSON path, or the command-line flag
    value: str  # the path as the user wrote it
    path: Path  # resolved
    field: str = "text"  # jsonl: the field that holds the text

    @property
    def code(self) -> str:
        """The R-code ``validate`` reports when this file is missing."""
        return {"imatrix": IMATRIX_FILE_NOT_FOUND, "evaluation": EVALUATION_FILE_NOT_FOUND}.get(
            self.kind, CALIBRATION_FILE_NOT_FOUND)

    @property
    def what(self) -> str:
        """The file's role, as messages name it."""
        return {"imatrix": "imatrix file", "text": "calibration text file", "jsonl": "calibration JSON-lines file",
                "evaluation": "evaluation text file"}[self.kind]


def named_inputs(recipe: Recipe) -> list[InputFile]:
    """Every input file the recipe names, in file order, whether or not a run reads it."""
    found = []
    section = recipe.section("imatrix")
    if section is not None and section.type == "file":
        found.append(InputFile("imatrix", "$.imatrix.path", section.path, recipe.resolve_path(section.path)))
    source = section.calibration.source if section is not None and section.type == "compute" else None
    if source is not None and source.type in ("text", "jsonl"):
        found.append(InputFile(source.type, "$.imatrix.calibration.source.path", source.path,
                               recipe.resolve_path(source.path), source.field))
    if recipe.evaluation.text:
        found.append(InputFile("evaluation", "$.evaluation.text", recipe.evaluation.text,
                               recipe.resolve_path(recipe.evaluation.text)))
    return found


def used_inputs(recipe: Recipe | None, options: ApplyOptions) -> list[InputFile]:
    """The input files an apply with ``options`` (ApplyOptions) reads."""
    used = []
    if options.imatrix_path is not None:
        flag = str(options.imatrix_path)
        used.append(InputFile("imatrix", "--imatrix", flag, Path(options.imatrix_path).expanduser()))
    if recipe is None:
        return used
    smoothquant = recipe.section("smoothquant") is not None  # reads imatrix.calibration, never an imatrix
    imatrix = recipe.section("imatrix")
    computes = imatrix is not None and imatrix.type == "compute" and options.imatrix_path is None
    evaluates = options.evaluates(recipe)
    for f in named_inputs(recipe):
        if f.kind == "imatrix":
            keep = options.imatrix_path is None and not smoothquant
        elif f.kind == "evaluation":
            keep = bool(evaluates)
        else:
            keep = computes or smoothquant
        if keep:
            used.append(f)
    return used


def check_inputs(recipe: Recipe | None, options: ApplyOptions) -> None:
    """Raise the error the stage that reads each input file would raise, before any work.

    Text files are read and checked whole (missing, binary, not UTF-8, empty, too
    short); an imatrix only for being there and readable: its contents are read
    by the imatrix stage, which is the first thing apply does.
    """
    from aqrecipe.formats import corpus

    check_extras(recipe, options)
    for f in used_inputs(recipe, options):
        if f.kind == "imatrix":
            _check_imatrix_file(f)
        elif f.kind == "jsonl":
            corpus.load_jsonl(f.path, f.field)
        else:
            corpus.load_text_file(f.path)


def check_extras(recipe: Recipe | None, options: ApplyOptions) -> None:
    """DependencyError now, not after packing, when a check the user asked for needs a missing extra.

    Evaluating a GGUF (``--eval``, ``evaluation.enabled``) and an explicit coherence
    check run in llama.cpp, on the built-in text unless a text file is given. The
    automatic coherence check of ultra-low-bit files is skipped instead (apply).
    """
    from aqrecipe.optional import require
    from aqrecipe.apply.options import wants_folder

    if recipe is not None and (recipe.section("smoothquant") is not None or wants_folder(recipe, options)):
        return  # W8A8 and folder outputs evaluate in torch
    coherence = recipe.section("coherence") if recipe is not None else None
    explicit_coherence = bool(coherence is not None and coherence.enabled)
    if options.evaluates(recipe) or explicit_coherence:
        what = "evaluating the output GGUF (--eval / evaluation.enabled / coherence.enabled)"
        require("llama_cpp", what)
        if explicit_coherence or recipe is None or not recipe.evaluation.text:
            require("gensim", f"{what} on the built-in text")


def _check_imatrix_file(f: InputFile) -> None:
    hint = "check the --imatrix path" if f.where == "--imatrix" else f"check imatrix.path ({RELATIVE})"
    if not f.path.exists():
        raise ImatrixError(f"imatrix {str(f.path)!r} does not exist", hint=hint)
    if not f.path.is_file():
        raise ImatrixError(f"imatrix {str(f.path)!r} is not a file", hint=hint)
    try:
        with open(f.path, "rb") as fh:
            fh.read(4)
    except OSError as exc:
        raise ImatrixError(f"imatrix {str(f.path)!r} cannot be read ({exc.strerror})",
                           hint="fix the file's permissions, or pass another imatrix") from None


def missing_file_issues(recipe: Recipe) -> list[RecipeIssue]:
    """R203/R204/R205: each named input file that does not exist (or is not a file), at its YAML position."""
    issues = []
    for f in named_inputs(recipe):
        if f.path.is_file():
            continue
        problem = "does not exist" if not f.path.exists() else "is not a file"
        shown = f" ({f.path})" if str(f.path) != f.value else ""
        issues.append(recipe.issue_at(
            f.where, f.code, f"{f.what} {f.value!r}{shown} {problem}", value=f.value,
            allowed=f"an existing file; {RELATIVE}",
        ))
    return issues
