"""Plans are inputs too (issue 16, class 5): a hand-edited plan is checked against the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from aqrecipe.cli import commands as cli
from aqrecipe.errors import EXIT_USER_ERROR

RECIPE = "version: 1\nmodel: {model}\nquantization:\n  mixture: Q4_K_M\noutput:\n  path: out.gguf\n"


def _edit_entries(change: Callable[[list[dict]], None], *, keep_hash: bool = False) -> Callable[[dict], None]:
    def edit(plan: dict) -> None:
        change(plan["entries"])
        if not keep_hash:
            plan.pop("sha256")

    return edit


def _by_name(entries: list[dict], name: str) -> dict:
    return next(e for e in entries if e["gguf_name"] == name)


EDITS = {
    "entry-deleted": (_edit_entries(lambda es: es.remove(_by_name(es, "blk.0.attn_v.weight"))),
                      ("leaves out", "blk.0.attn_v.weight")),
    "name-renamed": (_edit_entries(lambda es: _by_name(es, "blk.1.ffn_up.weight").update(gguf_name="blk.1.ffn_upp.weight")),
                     ("does not have", "blk.1.ffn_upp.weight", "leaves out", "blk.1.ffn_up.weight")),
    "entry-duplicated": (_edit_entries(lambda es: es.append(dict(_by_name(es, "blk.0.ffn_down.weight")))),
                         ("more than once", "blk.0.ffn_down.weight")),
    "shape-changed": (_edit_entries(lambda es: _by_name(es, "blk.0.attn_q.weight").update(shape=[64, 32])),
                      ("shapes", "blk.0.attn_q.weight", "[64, 32]")),
    "unknown-type": (_edit_entries(lambda es: _by_name(es, "blk.0.attn_k.weight").update(type="Q9_K")),
                     ("unknown types", "Q9_K")),
    "type-does-not-fit": (_edit_entries(lambda es: _by_name(es, "blk.0.attn_k.weight").update(type="Q4_K")),
                          ("do not fit", "blocks of 256")),
    "norm-quantized": (_edit_entries(lambda es: _by_name(es, "blk.0.attn_norm.weight").update(type="Q8_0")),
                       ("keeps in float", "blk.0.attn_norm.weight")),
    "bytes-wrong": (_edit_entries(lambda es: _by_name(es, "blk.1.attn_v.weight").update(n_bytes=7)),
                    ("byte sizes", "blk.1.attn_v.weight")),
    "edited-with-hash": (_edit_entries(lambda es: _by_name(es, "blk.0.attn_v.weight").update(type="Q8_0"), keep_hash=True),
                         ("edited after compile", "sha256")),
    "entries-not-a-list": (lambda plan: plan.update(entries=7), ("malformed plan",)),
}


@pytest.fixture(scope="module")
def compiled(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("plan")
    recipe = folder / "r.yaml"
    recipe.write_text(RECIPE.format(model=tiny_llama_dir))
    assert cli.main(["compile", str(recipe), "-o", str(folder / "plan.json"), "-q"]) == 0
    return folder, json.loads((folder / "plan.json").read_text())


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_plan_is_refused_before_any_work(case: str, compiled: tuple[Path, dict], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _, original = compiled
    edit, words = EDITS[case]
    plan = json.loads(json.dumps(original))
    edit(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    code = cli.main(["apply", str(path), "-o", str(tmp_path / "out.gguf"), "--no-eval", "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err, err
    for word in words:
        assert word.lower() in err.lower(), (word, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # no output, no work folder


def test_unedited_plan_applies_and_names_every_problem_at_once(compiled: tuple[Path, dict], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder, original = compiled
    assert cli.main(["apply", str(folder / "plan.json"), "-o", str(tmp_path / "out.gguf"), "--no-eval", "-q"]) == 0
    plan = json.loads(json.dumps(original))
    plan.pop("sha256")
    plan["entries"] = plan["entries"][2:] + [dict(plan["entries"][5])]
    (tmp_path / "bad.json").write_text(json.dumps(plan))
    assert cli.main(["apply", str(tmp_path / "bad.json"), "-o", str(tmp_path / "b.gguf"), "--no-eval", "-q"]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "leaves out" in err and "more than once" in err


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"entries": ' + "[" * 50_000 + "]" * 50_000 + "}"])
def test_deeply_nested_plan_is_a_message(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    for argv in (["apply", str(path), "-o", str(tmp_path / "x.gguf")], ["inspect", str(path)]):
        assert cli.main(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert "nested too deeply" in err and "Traceback" not in err
