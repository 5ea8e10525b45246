"""The command line end to end on a tiny model: exit codes, messages, bytes on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from aqrecipe.cli.commands import main
from aqrecipe.recipe import parse_recipe

ROOT = Path(__file__).resolve().parent.parent


def _recipe(tmp_path: Path, model: Path, quantization: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"version: 1\nmodel: {model}\nquantization:\n{quantization}evaluation:\n  enabled: false\n")
    return path


def test_validate_good_recipe_schema_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "recipes" / "q4_k_m.yaml"), "--schema-only"]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_bad_recipe_exit_2_with_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodel: demo\nquantization:\n  mixture: Q4_K_X\n")
    proc = subprocess.run(
        [sys.executable, "-m", "aqrecipe.cli", "validate", str(bad)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "bad.yaml:4:12: R106" in proc.stderr
    assert "Q4_K_X" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_reports_rule_matching_nothing_with_its_line(tiny_llama_dir: Path, tmp_path: Path) -> None:
    path = _recipe(tmp_path, tiny_llama_dir, "  default: Q8_0\n  rules:\n    - match: blk.9.attn_v.weight\n      type: Q8_0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "aqrecipe.cli", "validate", str(path), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    issues = json.loads(proc.stdout)["error"]["issues"]
    assert [(i["code"], i["line"]) for i in issues] == [("R201", 6)]


def test_validate_missing_model_is_positioned(tmp_path: Path) -> None:
    path = _recipe(tmp_path, tmp_path / "nope", "  default: Q8_0\n")
    proc = subprocess.run([sys.executable, "-m", "aqrecipe.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "r.yaml:2:8: R202" in proc.stderr


def _positions(text: str, value: str) -> tuple[int, int]:
    """1-based (line, column) of the first ``value`` in ``text``."""
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if value in ln)
    return line, text.splitlines()[line - 1].index(value) + 1


@pytest.mark.parametrize("kind", ["imatrix-and-eval", "jsonl-and-eval-folder", "calibration-text"])
def test_validate_reports_missing_input_files_with_their_position(
    kind: str, tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """R203 imatrix, R204 calibration data, R205 evaluation text; files that exist are not reported."""
    head = f"version: 1\nmodel: {tiny_llama_dir}\nquantization:\n  default: Q8_0\n"
    (tmp_path / "sub").mkdir()
    (tmp_path / "there.txt").write_text("some prose " * 50)
    body, expected = {
        "imatrix-and-eval": ("imatrix:\n  type: file\n  path: missing.imatrix.gguf\n"
                             "evaluation:\n  enabled: false\n  text: missing-eval.txt\n",
                             [("R203", "missing.imatrix.gguf", "$.imatrix.path", "does not exist"),
                              ("R205", "missing-eval.txt", "$.evaluation.text", "does not exist")]),
        "jsonl-and-eval-folder": ("imatrix:\n  type: compute\n  calibration:\n    source: {type: jsonl, path: data/c.jsonl}\n"
                                  "evaluation: {enabled: true, text: sub}\n",
                                  [("R204", "data/c.jsonl", "$.imatrix.calibration.source.path", "does not exist"),
                                   ("R205", "sub", "$.evaluation.text", "is not a file")]),
        "calibration-text": ("imatrix:\n  type: compute\n  calibration:\n    source: {type: text, path: gone.txt}\n"
                             "evaluation: {enabled: true, text: there.txt}\n",
                             [("R204", "gone.txt", "$.imatrix.calibration.source.path", "does not exist")]),
    }[kind]
    path = tmp_path / "r.yaml"
    path.write_text(head + body)
    assert main(["validate", str(path), "--schema-only"]) == 0  # the files are not the schema's business
    capsys.readouterr()
    assert main(["validate", str(path), "--json"]) == 2
    issues = json.loads(capsys.readouterr().out)["error"]["issues"]
    assert [(i["code"], i["value"], i["json_path"]) for i in issues] == [e[:3] for e in expected]
    for issue, (_, value, _, problem) in zip(issues, expected):
        assert (issue["line"], issue["column"]) == _positions(head + body, value)
        assert problem in issue["message"] and str(tmp_path / value) in issue["message"]
        assert "relative to the recipe file" in issue["allowed"]
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line, column = _positions(head + body, expected[0][1])
    assert f"r.yaml:{line}:{column}: {expected[0][0]} " in err and "Traceback" not in err


def test_validate_accepts_input_files_that_exist(tiny_llama_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.txt").write_text("calibration prose " * 50)
    (tmp_path / "e.txt").write_text("evaluation prose " * 50)
    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\nmodel: {tiny_llama_dir}\nquantization:\n  default: Q8_0\n"
                    "imatrix:\n  type: compute\n  calibration:\n    source: {type: text, path: data/c.txt}\n"
                    "evaluation: {enabled: true, text: e.txt}\n")
    assert main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_compile_json_and_plan_file(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, tiny_llama_dir, "  mixture: Q8_0\n")
    plan_path = tmp_path / "plan.json"
    assert main(["compile", str(path), "--json", "-o", str(plan_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["n_params"] == sum(e["n_params"] for e in data["entries"])
    assert json.loads(plan_path.read_text())["entries"] == data["entries"]


def test_compile_set_overrides_recipe(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, tiny_llama_dir, "  mixture: Q8_0\n")
    assert main(["compile", str(path), "--json", "--set", "blk.0.attn_q.weight=F16"]) == 0
    entries = {e["gguf_name"]: e for e in json.loads(capsys.readouterr().out)["entries"]}
    assert entries["blk.0.attn_q.weight"]["type"] == "F16"
    assert entries["blk.0.attn_q.weight"]["chosen_by"].startswith("--set")


def test_apply_twice_gives_identical_bytes_and_records_the_recipe(tiny_llama_dir: Path, tmp_path: Path) -> None:
    path = _recipe(tmp_path, tiny_llama_dir, "  default: Q4_0\n  rules:\n    - match: '*.ffn_down.weight'\n      type: Q8_0\n")
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert main(["apply", str(path), "-o", str(a), "-q"]) == 0
    assert main(["apply", str(path), "-o", str(b), "-q"]) == 0
    assert a.read_bytes() == b.read_bytes()
    reader = gguf.GGUFReader(str(a))
    assert reader.fields["aqrecipe.recipe"].contents() == path.read_text()
    assert len(reader.fields["aqrecipe.plan_sha256"].contents()) == 64
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == "Q8_0" and types["blk.1.attn_q.weight"] == "Q4_0"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_apply_plan_file_equals_apply_recipe(tiny_llama_dir: Path, tmp_path: Path) -> None:
    path = _recipe(tmp_path, tiny_llama_dir, "  mixture: Q8_0\n")
    plan_path = tmp_path / "plan.json"
    assert main(["compile", str(path), "-o", str(plan_path), "-q", "--summary"]) == 0
    assert main(["apply", str(plan_path), "-o", str(tmp_path / "from-plan.gguf"), "-q"]) == 0
    assert main(["apply", str(path), "-o", str(tmp_path / "from-recipe.gguf"), "-q"]) == 0
    assert (tmp_path / "from-plan.gguf").read_bytes() == (tmp_path / "from-recipe.gguf").read_bytes()


def test_apply_model_override(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """apply --model runs a recipe on another model (as compile --model plans it); a compiled plan
    names its model already, so --model is refused for it."""
    path = tmp_path / "other.yaml"
    path.write_text("version: 1\nmodel: path/to/no-such-model\nquantization:\n  mixture: Q8_0\n", encoding="utf-8")
    dest = tmp_path / "over.gguf"
    assert main(["apply", str(path), "--model", str(tiny_llama_dir), "-o", str(dest), "-q"]) == 0
    direct = _recipe(tmp_path, tiny_llama_dir, "  mixture: Q8_0\n")
    assert main(["apply", str(direct), "-o", str(tmp_path / "direct.gguf"), "-q"]) == 0
    ours, theirs = (gguf.GGUFReader(str(f)).tensors for f in (dest, tmp_path / "direct.gguf"))
    assert [(t.name, t.tensor_type, t.data.tobytes()) for t in ours] == \
        [(t.name, t.tensor_type, t.data.tobytes()) for t in theirs]  # the metadata names each recipe
    plan_path = tmp_path / "plan.json"
    assert main(["compile", str(direct), "-o", str(plan_path), "-q", "--summary"]) == 0
    capsys.readouterr()
    assert main(["apply", str(plan_path), "--model", str(tiny_llama_dir), "-o", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "--model cannot change a compiled plan" in err and "Traceback" not in err


def test_apply_into_missing_folder_fails_cleanly(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, tiny_llama_dir, "  mixture: Q8_0\n")
    assert main(["apply", str(path), "-o", str(tmp_path / "missing" / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "mkdir" in err
    assert not (tmp_path / "missing").exists()


def test_quantize_emit_recipe_round_trips(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", str(tiny_llama_dir), "--type", "q4_k_m", "--set", "output.weight=Q8_0", "--emit-recipe"]) == 0
    recipe = parse_recipe(capsys.readouterr().out)
    assert recipe.quantization.mixture == "Q4_K_M"
    assert [(r.pattern, r.type) for r in recipe.quantization.rules] == [("output.weight", "Q8_0")]


def test_quantize_writes_the_same_file_as_its_emitted_recipe(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.gguf"
    assert main(["quantize", str(tiny_llama_dir), "--type", "Q8_0", "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(tiny_llama_dir), "--type", "Q8_0", "-o", str(out), "--emit-recipe"]) == 0
    recipe_path = tmp_path / "emitted.yaml"
    recipe_path.write_text(capsys.readouterr().out)
    again = tmp_path / "again.gguf"
    assert main(["apply", str(recipe_path), "-o", str(again), "-q"]) == 0
    # same tensors; metadata differs only in the recorded recipe text
    a, b = gguf.GGUFReader(str(out)), gguf.GGUFReader(str(again))
    assert [(t.name, t.tensor_type, bytes(t.data)) for t in a.tensors] == [(t.name, t.tensor_type, bytes(t.data)) for t in b.tensors]


def test_quantize_unknown_type(tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", str(tiny_llama_dir), "--type", "Q4_K_XL", "-o", "x.gguf"]) == 2
    err = capsys.readouterr().err
    assert "Q4_K_XL" in err and "Q4_K_M" in err


def test_inspect_gguf(tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.gguf"
    assert main(["quantize", str(tiny_llama_dir), "--type", "Q8_0", "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metadata"]["general.architecture"] == "llama"
    assert set(data["types"]) == {"F32", "Q8_0"}


def test_import_does_not_import_torch() -> None:
    code = "import sys, aqrecipe, aqrecipe.cli.commands, aqrecipe.plan, aqrecipe.recipe, aqrecipe.quant.codecs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_recipe_problems_are_printed_once_with_the_right_noun(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: demo\nquantization:\n  mixture: Q8_0\ncoherence:\n  new_tokens: 4\n",
                      encoding="utf-8")
    assert main(["validate", str(recipe), "--schema-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("R104") == 1, err
    assert "1 problem found" in err and "problem(s)" not in err
