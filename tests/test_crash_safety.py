"""kill -9 loop: ``aqrecipe apply`` is SIGKILLed at seeded points spread over calibration,
planner measurement, packing and publishing the output. After every kill the destination is
absent or still the previous complete file, with no temp file beside it; the rerun resumes
(finished checkpoints are not redone) and writes exactly the reference bytes.

The killed runs are child processes running ``aqrecipe.cli.commands.main``; they are forked from a
forkserver that imported torch/transformers once, so each kill costs seconds, not an import.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from aqrecipe._testhooks import KILL_ENV  # noqa: E402
from aqrecipe.calibration.runner import KILL_AFTER_ENV, KILL_DURING_ENV  # noqa: E402
from aqrecipe.cli.commands import main  # noqa: E402

pytestmark = pytest.mark.slow

SEED = 20240608
N_LAYERS = 2  # tiny_llama_dir: 2 decoder layers -> calibration stages 0, 1 and 2 (output.weight's input)
N_TENSORS = 21
N_PROXY_STAGES = 3  # planner proxy files: layer 0, layer 1, global
OLD = b"a previous complete output, not a GGUF\n" * 64
PRELOAD = ["torch", "transformers", "transformers.models.llama.modeling_llama", "aqrecipe.cli", "aqrecipe.apply.run",
           "aqrecipe.imatrix.compute", "aqrecipe.calibration.runner", "aqrecipe.calibration._kernels",
           "aqrecipe.planner", "matplotlib.pyplot", "test_crash_safety"]


def _candidates() -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Every kill point, by phase: (label, environment of the killed run)."""
    return {
        "calibration": [(f"calibration-during:{k}", {KILL_DURING_ENV: str(k)}) for k in range(N_LAYERS)]
        + [(f"calibration-after:{k}", {KILL_AFTER_ENV: str(k)}) for k in range(N_LAYERS + 1)],
        "measure": [(f"measure:{n}", {KILL_ENV: f"measure:{n}"}) for n in range(N_PROXY_STAGES)],
        "pack": [(f"pack:{n}", {KILL_ENV: f"pack:{n}"}) for n in range(N_TENSORS)],
        "publish": [("publish:0", {KILL_ENV: "publish:0"})],
        "done": [("done:0", {KILL_ENV: "done:0"})],
    }


def kill_points() -> list[tuple[str, dict[str, str]]]:
    """11 points chosen with a fixed seed: 3 calibration, 2 measurement, 4 packing, publish, done."""
    rng = random.Random(SEED)
    picks = {"calibration": 3, "measure": 2, "pack": 4, "publish": 1, "done": 1}
    cands = _candidates()
    return [p for phase, k in picks.items() for p in rng.sample(cands[phase], k)]


def _child(argv: list[str], env: dict[str, str]) -> None:  # runs in the killed process
    os.environ.update(env)
    sys.exit(main(argv))


@pytest.fixture(scope="module")
def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


@pytest.fixture(scope="module")
def recipe(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers_models import CORPUS

    folder = tmp_path_factory.mktemp("crash")
    text = folder / "calib.txt"
    text.write_text("\n".join(CORPUS * 3), encoding="utf-8")
    path = folder / "recipe.yaml"
    path.write_text(
        f"version: 1\nmodel: {tiny_llama_dir}\n"
        "imatrix:\n  type: compute\n"
        f"  calibration: {{samples: 128, seq_len: 16, source: {{type: text, path: {text}}}}}\n"
        "planner: {type: budget, target_bpw: 6.0, measurement: {type: proxy, calibrate_tensors: 0}}\n"
        "quantization: {default: Q8_0}\nevaluation: {enabled: false}\n"
    )
    return path


def _apply(recipe: Path, dest: Path, work: Path) -> list[str]:
    return ["apply", str(recipe), "-o", str(dest), "--work-dir", str(work), "-q", "--json"]


def _checkpoints(work: Path) -> dict[str, tuple[int, int]]:
    """Finished work a resume must reuse: calibration stages and planner measurement files."""
    files = sorted(work.glob("imatrix/stage-*.npz")) + sorted(work.glob("planner/measure-*/*.json"))
    return {str(f.relative_to(work)): (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


def _beside(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(dest.name))


def _expected_reuse(label: str) -> int:
    """How many checkpoint files the killed run must have finished at ``label``."""
    phase, n = label.split(":")
    n = int(n)
    if phase == "calibration-during":
        return n
    if phase == "calibration-after":
        return n + 1
    calibration = N_LAYERS + 1
    if phase == "measure":
        return calibration + n + 1
    return calibration + N_PROXY_STAGES + 1  # + the finished measurement file


def test_points_cover_every_phase() -> None:
    labels = [label for label, _ in kill_points()]
    assert len(set(labels)) == len(labels) >= 10
    phases = {label.split(":")[0].split("-")[0] for label in labels}
    assert phases == {"calibration", "measure", "pack", "publish", "done"}
    assert labels == [label for label, _ in kill_points()]  # the seed fixes them


def test_kill9_loop_resumes_to_identical_bytes(recipe: Path, tmp_path: Path, forkserver,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ref = tmp_path / "ref.gguf"
    assert main(_apply(recipe, ref, tmp_path / "work-ref")) == 0
    capsys.readouterr()
    reference = ref.read_bytes()
    for i, (label, env) in enumerate(kill_points()):
        dest, work = tmp_path / f"out-{i}.gguf", tmp_path / f"work-{i}"
        if i % 2 == 0:  # half the runs replace an earlier complete output
            dest.write_bytes(OLD)
        before = dest.read_bytes() if dest.exists() else None
        proc = forkserver.Process(target=_child, args=(_apply(recipe, dest, work), env))
        proc.start()
        proc.join(600)
        if proc.is_alive():
            proc.kill()
            pytest.fail(f"{label}: the run did not reach its kill point")
        assert proc.exitcode == -signal.SIGKILL, f"{label}: exit code {proc.exitcode}, not killed"
        if label == "done:0":  # killed after the output was published: it is complete
            assert dest.read_bytes() == reference, label
        elif before is None:
            assert not dest.exists(), label
        else:
            assert dest.read_bytes() == before, label
        assert _beside(dest) == ([dest.name] if dest.exists() else []), f"{label}: temp file left"
        finished = _checkpoints(work)
        assert len(finished) == _expected_reuse(label), (label, sorted(finished))
        if label.startswith("calibration"):
            manifest = json.loads((work / "imatrix" / "manifest.json").read_text())
            assert manifest["completed"] == _expected_reuse(label), label

        assert main(_apply(recipe, dest, work)) == 0, label  # the rerun resumes (and takes the lock)
        result = json.loads(capsys.readouterr().out)
        assert result["peak_rss_bytes"] > 0
        assert dest.read_bytes() == reference, f"{label}: resumed output differs from the reference"
        assert _beside(dest) == [dest.name], label
        assert not (work / "output").exists(), label  # staging folder emptied and removed
        after = _checkpoints(work)
        reused = {k: v for k, v in finished.items() if after.get(k) == v}
        assert reused == finished, f"{label}: finished checkpoints were redone: {sorted(set(finished) - set(reused))}"
