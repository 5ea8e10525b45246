"""The README's model table is the one aqrecipe.models.support generates."""

from __future__ import annotations

from pathlib import Path

from aqrecipe.models.support import TESTED_FAMILIES, supported_markdown

README = Path(__file__).parent.parent / "README.md"


def test_readme_table_is_generated_from_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = "<!-- supported-models:begin -->\n", "<!-- supported-models:end -->"
    block = text[text.index(start) + len(start):text.index(end)]
    assert block == supported_markdown(), "run `python -m aqrecipe.models.support` and paste it into README.md"


def test_every_family_has_a_distinct_name_and_class() -> None:
    assert len({f.name for f in TESTED_FAMILIES}) == len({f.hf_architecture for f in TESTED_FAMILIES}) == 7
