"""One rule for every path a command writes: it never destroys an input, another output or a special file.

Every command that writes (``apply``, ``quantize``, ``compile -o``, ``imatrix
compute``, ``imatrix convert``) calls :func:`check_write_targets` with the paths it
writes and the paths it reads, before any work starts. Paths are compared as
the filesystem sees them: the directory entry a rename would replace (its folder
resolved) and the file it reaches through symlinks, plus the inode for hard
links, so ``-o link-to-model.safetensors`` or ``-o ../model/./model.safetensors``
are caught like the plain name.

Refused (:class:`~aqrecipe.errors.OutputError`, naming both roles and the fix):

* ``AQ702``: a write is a read (or a symlink or hard link to one); a write is a
  folder the run replaces or fills (the safetensors output, the work folder)
  that holds a read; a write replaces an existing file of a model folder;
  two writes are the same path, or one lies inside the work folder.
* ``AQ703``: a write is an existing character or block device, FIFO or socket,
  or lies under ``/dev``, ``/proc`` or ``/sys`` (as root, renaming a file onto
  ``/dev/null`` would replace the device itself).
* ``AQ704``: an existing work folder that aqrecipe did not make (non-empty,
  without a ``.lock`` or a stage's files): a run creates and deletes files there.

Inside a model folder (a read that is a folder), *new* files are allowed: many
users write ``MODEL/model-Q8_0.gguf`` beside the checkpoint. What a run may not
touch there is the model's own files: every existing entry except the kinds
aqrecipe writes itself (``*.gguf``, ``*.dat``, and the ``.aqrecipe-work`` and
``*.work`` folders), and it may not add a ``*.safetensors`` file, which the next
read of the folder would take for part of the checkpoint.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from aqrecipe.errors import OutputError
from aqrecipe.formats.bounded import special_kind

CLASH_CODE = "AQ702"
SPECIAL_CODE = "AQ703"
FOREIGN_WORK_CODE = "AQ704"

SYSTEM_TREES = (Path("/dev"), Path("/proc"), Path("/sys"))
FILE_TREES = (Path("/dev/shm"),)  # a tmpfs for ordinary files under /dev: a fine place for outputs
#: what marks a folder as an aqrecipe work folder: apply's lock (calibration.checkpoint.LOCK), the
#: calibration's own lock in imatrix/ or smoothquant/ (eval --simulate takes no top-level lock), the
#: super-weight and planner stages' files
WORK_MARKS = (".lock", "imatrix/.lock", "smoothquant/.lock", "importance.json", "planner")
#: entries of a model folder that aqrecipe writes itself (outputs, imatrices, work folders): not the model's
OURS_IN_MODEL_FOLDER = ("*.gguf", "*.dat", ".aqrecipe-work", "*.work")
#: new files a model folder may not receive: the HF reader would take them for weights
JOINS_MODEL = ("*.safetensors",)


@dataclass(frozen=True)
class Write:
    """One path a run writes: ``kind`` "file" (replaced atomically), "folder" (replaced whole) or "work"
    (a work folder the run creates, fills and empties)."""

    path: Path
    kind: str = "file"


def check_write_targets(writes: Mapping[str, Path | Write | None], reads: Mapping[str, Path | None]) -> None:
    """OutputError unless every write is safe against every read, every other write and the system.

    ``writes`` and ``reads`` map a role as messages name it ("output (-o)",
    "report (--report)", "model folder", "recipe") to its path; None entries are
    skipped. A read that is a folder stands for everything in it (see the module
    docstring for what may be written inside it). Creates and changes nothing.
    """
    ws = {role: (w if isinstance(w, Write) else Write(Path(w))) for role, w in writes.items() if w is not None}
    rs = {role: Path(r) for role, r in reads.items() if r is not None}
    for role, w in ws.items():
        _check_not_special(role, w)
    for wrole, w in ws.items():
        for rrole, r in rs.items():
            _check_against_read(wrole, w, rrole, r)
    roles = list(ws)
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            _check_pair(a, ws[a], b, ws[b])
            _check_pair(b, ws[b], a, ws[a])
    for role, w in ws.items():
        if w.kind == "work":
            _check_work_folder(role, w.path)


# --- identities ---------------------------------------------------------------------------
def _entry(p: Path) -> Path:
    """The directory entry a rename onto ``p`` replaces (its folder resolved, not ``p`` itself)."""
    a = Path(os.path.abspath(p))
    return a.parent.resolve() / a.name


def _ids(p: Path) -> set[Path]:
    """The directory entry a rename onto ``p`` replaces, and the file ``p`` reaches through symlinks."""
    return {_entry(p), Path(os.path.abspath(p)).resolve()}


def _same(a: Path, b: Path) -> bool:
    if _ids(a) & _ids(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links (and bind mounts) of one file
    except OSError:
        return False


def _inside(p: Path, folder: Path) -> Path | None:
    """``p`` relative to ``folder`` when it lies strictly inside it, else None."""
    for a in _ids(p):
        for f in _ids(folder):
            if a != f and a.is_relative_to(f):
                return a.relative_to(f)
    return None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def _fix(role: str) -> str:
    how = f"choose another path for the {role}"
    if role.startswith("work folder"):
        how = "pass --work-dir with another folder"
    return (f"{how}; a run never writes over what it reads (model, recipe, plan, imatrix, calibration or "
            "evaluation text) or over its other outputs")


def _shown(p: Path) -> str:
    """``p``, with where it leads when it is a symlink (the case a user is least likely to see)."""
    return f"{p} (a symlink to {Path(os.path.abspath(p)).resolve()})" if os.path.islink(p) else str(p)


# --- the checks --------------------------------------------------------------------------
def _system_tree(p: Path) -> Path | None:
    for a in (Path(os.path.abspath(p)), *_ids(p)):
        if any(a.is_relative_to(ok) and a != ok for ok in FILE_TREES):
            continue
        for tree in SYSTEM_TREES:
            if a.is_relative_to(tree):
                return tree
    return None


def _check_not_special(role: str, w: Write) -> None:
    tree = _system_tree(w.path)
    kind = None
    try:
        kind = special_kind(os.stat(w.path).st_mode)
    except OSError:
        pass  # absent (or a dangling symlink): a new file
    if kind == "a folder":
        kind = None  # a folder where a file is expected is check_output_folder's message
    if kind is None and tree is None:
        return
    if kind:  # renaming a finished file onto it would replace the FIFO or device (as root, /dev/null itself)
        what = (f"is {kind}: an output must be a regular file or a new name, and writing it would replace "
                f"that {kind[2:]}")
    else:
        what = f"lies under {tree}, which holds devices and kernel files, not outputs"
    hint = f"choose another path for the {role}: a regular file or a new name"
    if role.startswith("report"):
        hint += "; to see the report on the terminal, pass --json instead"
    raise OutputError(f"the {role} {_shown(w.path)} {what}", hint=hint, code=SPECIAL_CODE)


def _check_against_read(wrole: str, w: Write, rrole: str, r: Path) -> None:
    if _same(w.path, r):
        if os.path.islink(w.path) and _entry(w.path) not in _ids(r):
            how = "is a symlink to"
        elif not _ids(w.path) & _ids(r):
            how = "is a hard link of"
        else:
            how = "is"
        raise OutputError(f"the {wrole} {w.path} {how} the {rrole} {r}: writing it would destroy that input",
                          hint=_fix(wrole), code=CLASH_CODE)
    if w.kind != "file" and _inside(r, w.path) is not None:
        raise OutputError(f"the {wrole} {w.path} holds the {rrole} {r}: the run "
                          + ("creates and removes files in" if w.kind == "work" else "replaces") + " that folder",
                          hint=_fix(wrole), code=CLASH_CODE)
    if not r.is_dir():
        return
    rel = _inside(w.path, r)
    if rel is None:
        return
    top = rel.parts[0]
    if os.path.lexists(w.path) and not _matches(top, OURS_IN_MODEL_FOLDER):
        raise OutputError(f"the {wrole} {_shown(w.path)} is {rel} of the {rrole} {r}: writing it would replace one "
                          "of the model's own files", hint=_fix(wrole) + " (a new file name in that folder is fine)",
                          code=CLASH_CODE)
    if not os.path.lexists(w.path) and len(rel.parts) == 1 and _matches(top, JOINS_MODEL):
        raise OutputError(f"the {wrole} {w.path} would add {top} to the {rrole} {r}: the next read of that folder "
                          "would take it for part of the checkpoint", hint=_fix(wrole) + " (not *.safetensors)",
                          code=CLASH_CODE)


def _check_pair(arole: str, a: Write, brole: str, b: Write) -> None:
    """``a`` and ``b`` are two writes: not one path, and ``b`` not inside ``a`` when ``a`` is a work folder."""
    if _same(a.path, b.path):
        raise OutputError(f"the {arole} and the {brole} are the same path, {a.path}: one would replace the other",
                          hint=f"give the {arole} and the {brole} paths of their own", code=CLASH_CODE)
    if a.kind == "work" and _inside(b.path, a.path) is not None:
        raise OutputError(f"the {brole} {b.path} lies inside the {arole} {a.path}, whose files the run creates "
                          "and removes", hint=_fix(brole), code=CLASH_CODE)


def _check_work_folder(role: str, folder: Path) -> None:
    if not folder.is_dir():
        return
    names = sorted(p.name for p in _entries(folder))
    if names and not any(os.path.lexists(folder / mark) for mark in WORK_MARKS):
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise OutputError(
            f"the {role} {folder} exists and was not made by aqrecipe (it holds {shown}): a run creates, "
            "empties and removes files there",
            hint="pass --work-dir with a new or empty folder, or the work folder of an earlier run",
            code=FOREIGN_WORK_CODE,
        )


def _entries(folder: Path) -> Iterator[Path]:
    try:
        yield from folder.iterdir()
    except OSError:
        return  # unreadable: the lock's own open reports it


_SPLIT_PART = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)


def model_reads(model: str | os.PathLike[str] | None) -> dict[str, Path]:
    """The reads of a model reference, by role: its folder, or its GGUF file and every split part present.

    Nothing is opened (``"demo"`` and None give nothing: the demo lives in aqrecipe's cache).
    """
    if model is None or str(model) == "demo":
        return {}
    path = Path(model).expanduser()
    if path.is_dir():
        return {"model folder": path}
    m = _SPLIT_PART.match(path.name)
    if m is None:
        return {"model file": path}
    parts = {"model file": path}
    try:
        siblings = os.listdir(path.parent or ".")
    except OSError:
        return parts
    for name in sorted(siblings):  # llama.cpp's gguf-split names: MODEL-00002-of-00003.gguf
        other = _SPLIT_PART.match(name)
        if other and other["prefix"] == m["prefix"] and other["count"] == m["count"] and name != path.name:
            parts[f"model part {int(other['no'])} of {int(m['count'])}"] = path.with_name(name)
    return parts
