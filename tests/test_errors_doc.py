"""docs/errors.md and the bad-input tests name the same kinds of bad input (issue #8)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"
MODEL_PART = ROOT / "docs" / "errors-model.part.md"  # helper output, merged into DOC by hand
TESTS = {"files": Path(__file__).with_name("test_bad_inputs_files.py"),
         "model": Path(__file__).with_name("test_bad_inputs_model.py"),
         "hostile": Path(__file__).with_name("test_bad_inputs_hostile.py")}
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")
MIN_KINDS = 30


def table_ids(text: str) -> list[str]:
    """The first cell (in backticks) of every table row."""
    return [m.group(1) for line in text.splitlines() if (m := ROW.match(line))]


def doc_ids() -> list[str]:
    """Ids in docs/errors.md; while its model section is still unmerged, the part file's too."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Model folders and outputs", 1)[1].split("\n## ", 1)[0]
    if not table_ids(section) and MODEL_PART.is_file():
        text += "\n" + MODEL_PART.read_text(encoding="utf-8")
    return table_ids(text)


def cases(which: str) -> dict[str, str]:
    path = TESTS[which]
    spec = importlib.util.spec_from_file_location(f"_bad_inputs_{which}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return dict(module.CASES)


def all_cases() -> dict[str, str]:
    found = cases("files")
    for which in ("model", "hostile"):
        if TESTS[which].is_file():
            found.update(cases(which))
    return found


def case_of(row_id: str, known: dict[str, str]) -> str | None:
    """The case a row documents: its own id, or a variant row such as ``model-nan-weights-down``."""
    if row_id in known:
        return row_id
    prefixes = [c for c in known if row_id.startswith((f"{c}-", f"{c} ("))]
    return max(prefixes, key=len) if prefixes else None


def test_table_ids_are_parsed() -> None:
    assert table_ids("| id | x |\n|---|---|\n| `a-b` | c |\n| `d (e)` | f |\ntext `g` |") == ["a-b", "d (e)"]


def test_every_documented_id_is_a_tested_case() -> None:
    if not TESTS["model"].is_file():
        pytest.skip("tests/test_bad_inputs_model.py is not there yet: model ids cannot be checked")
    known = all_cases()
    unknown = [i for i in doc_ids() if case_of(i, known) is None]
    assert not unknown, f"docs/errors.md documents ids no test has in CASES: {unknown}"


@pytest.mark.parametrize("which", sorted(TESTS))
def test_every_case_is_documented(which: str) -> None:
    if not TESTS[which].is_file():
        pytest.skip(f"{TESTS[which].name} is not there yet")
    known = cases(which)
    covered = {case_of(i, known) for i in doc_ids()}
    missing = sorted(set(known) - covered)
    assert not missing, f"{TESTS[which].name} CASES missing from docs/errors.md: {missing}"


def test_at_least_thirty_kinds() -> None:
    if not TESTS["model"].is_file():
        pytest.skip("tests/test_bad_inputs_model.py is not there yet: the total needs both halves")
    known = all_cases()
    documented = {c for i in doc_ids() if (c := case_of(i, known))}
    assert len(documented) >= MIN_KINDS, sorted(documented)
    assert len(set(doc_ids())) == len(doc_ids()), "an id appears twice in docs/errors.md"
