"""The one output-path rule (aqrecipe.formats.paths, issue 16 class 1), on its own: no run of the CLI.

The corpus cases in test_bad_inputs_files.py run the same rule through every command; these check
the path arithmetic itself (symlinked folders, '..', hard links, split parts, what may be written
inside a model folder) and the cases no test may try for real (-o /dev/null as root).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aqrecipe.errors import OutputError
from aqrecipe.formats.paths import Write, check_write_targets, model_reads


def refused(writes: dict, reads: dict, code: str, *words: str) -> OutputError:
    with pytest.raises(OutputError) as err:
        check_write_targets(writes, reads)
    assert err.value.code == code, err.value
    for word in words:
        assert word in err.value.message, err.value.message
    assert err.value.hint
    return err.value


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        (folder / name).write_text(name)
    return folder


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero", "/dev/stdout", "/proc/self/status", "/sys/x.gguf",
                                  "/dev/new-file.gguf"])
def test_system_paths_are_refused_unwritten(path: str) -> None:
    refused({"output (-o)": Path(path)}, {}, "AQ703", path)


def test_dev_shm_is_an_ordinary_tmpfs() -> None:
    check_write_targets({"output": Path("/dev/shm/aqrecipe-test-never-written.gguf")}, {})


def test_fifo_socket_and_symlink_to_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    (tmp_path / "link.gguf").symlink_to(tmp_path / "p")
    refused({"output": tmp_path / "p"}, {}, "AQ703", "is a FIFO")
    refused({"report (--report)": tmp_path / "link.gguf"}, {}, "AQ703", "a symlink to", "is a FIFO")


def test_every_spelling_of_a_model_file_is_caught(model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "alias").symlink_to(model, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    reads = {"model folder": model}
    for spelling in (model / "model.safetensors", tmp_path / "alias" / "model.safetensors",
                     Path("model/../model/./config.json"), Path("alias/tokenizer.json"), model / "README.md"):
        refused({"output": spelling}, reads, "AQ702", "of the model folder", "the model's own files")
    refused({"output": model / "new.safetensors"}, reads, "AQ702", "would add new.safetensors")
    refused({"output": Write(model, "folder")}, reads, "AQ702", "is the model folder")


def test_new_files_and_aqrecipes_own_outputs_may_live_in_the_model_folder(model: Path) -> None:
    reads = {"model folder": model}
    check_write_targets({"output": model / "model-Q8_0.gguf", "report (--report)": model / "report.json",
                         "work folder": Write(model / ".aqrecipe-work" / "model-Q8_0.gguf", "work")}, reads)
    (model / "model-Q8_0.gguf").write_bytes(b"an earlier output")  # a rerun replaces it
    (model / "im.gguf.work").mkdir()
    (model / "im.gguf.work" / ".lock").write_text("")
    check_write_targets({"output": model / "model-Q8_0.gguf",
                         "work folder": Write(model / "im.gguf.work", "work")}, reads)
    check_write_targets({"output": model / "sub" / "weights.safetensors"}, reads)  # not read: not top level


def test_hard_link_and_symlink_of_an_input_file(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\n")
    os.link(recipe, tmp_path / "hard.json")
    (tmp_path / "soft.json").symlink_to(recipe)
    refused({"report (--report)": tmp_path / "hard.json"}, {"recipe": recipe}, "AQ702", "is a hard link of")
    refused({"report (--report)": tmp_path / "soft.json"}, {"recipe": recipe}, "AQ702", "is a symlink to")
    refused({"report (--report)": recipe}, {"recipe": tmp_path / "soft.json"}, "AQ702", "is the recipe")


def test_outputs_do_not_collide(tmp_path: Path) -> None:
    refused({"output": tmp_path / "x.gguf", "report (--report)": tmp_path / "x.gguf"}, {}, "AQ702",
            "the output and the report (--report) are the same path")
    refused({"output": tmp_path / "w" / "x.gguf", "work folder": Write(tmp_path / "w", "work")}, {}, "AQ702",
            "lies inside the work folder")
    check_write_targets({"output": tmp_path / "x.gguf", "report (--report)": tmp_path / "x.json",
                         "work folder": Write(tmp_path / ".aqrecipe-work" / "x.gguf", "work")}, {})


def test_folders_that_hold_an_input(tmp_path: Path, model: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("")
    refused({"output": Write(tmp_path, "folder")}, {"recipe": recipe}, "AQ702", "holds the recipe", "replaces")
    refused({"work folder": Write(tmp_path, "work")}, {"model folder": model}, "AQ702", "holds the model folder",
            "creates and removes files")


def test_an_existing_work_folder_must_be_aqrecipes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    check_write_targets({"work folder": Write(work, "work")}, {})  # empty
    (work / "output").mkdir()
    refused({"work folder": Write(work, "work")}, {}, "AQ704", "was not made by aqrecipe", "output")
    (work / ".lock").write_text("")
    check_write_targets({"work folder": Write(work, "work")}, {})  # an earlier run's
    simulate = tmp_path / "simulate"  # eval --simulate's: only the calibration's own lock
    (simulate / "imatrix").mkdir(parents=True)
    (simulate / "imatrix" / ".lock").write_text("")
    check_write_targets({"work folder": Write(simulate, "work")}, {})


def test_model_reads_finds_every_split_part(tmp_path: Path) -> None:
    for i in (1, 2, 3):
        (tmp_path / f"m-0000{i}-of-00003.gguf").write_bytes(b"GGUF")
    (tmp_path / "m-00001-of-00002.gguf").write_bytes(b"GGUF")  # another split: not a part of this one
    parts = model_reads(tmp_path / "m-00002-of-00003.gguf")
    assert sorted(p.name for p in parts.values()) == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert model_reads(tmp_path) == {"model folder": tmp_path}
    assert model_reads("demo") == {} and model_reads(None) == {}
    refused({"output": tmp_path / "m-00003-of-00003.gguf"}, model_reads(tmp_path / "m-00001-of-00003.gguf"),
            "AQ702", "is the model part 3 of 3")
