"""The sequential calibration runner: exactness, checkpoints, resume after SIGKILL, locks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aqrecipe.calibration.checkpoint import WorkDir  # noqa: E402
from aqrecipe.calibration.data import CalibrationSpec, calibration_windows, load_tokenizer  # noqa: E402
from aqrecipe.calibration.observers import LinearObserver  # noqa: E402
from aqrecipe.calibration.runner import (  # noqa: E402
    KILL_AFTER_ENV,
    KILL_DURING_ENV,
    RunnerOptions,
    run_calibration,
)
from aqrecipe.errors import CalibrationDataError, ResumeError  # noqa: E402
from aqrecipe.imatrix import compute_imatrix, load_imatrix  # noqa: E402
from aqrecipe.models import open_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_LAYERS = 4
OPTS = RunnerOptions(device="cpu", batch_tokens=96)  # 3 samples of 32 tokens per batch


def _build(folder: Path) -> Path:
    from helpers_models import VOCAB, build_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=N_LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny4"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aqrecipe.formats import corpus

    p = tmp_path_factory.mktemp("text") / "calib.txt"
    p.write_text(corpus.join_articles(corpus.calibration_articles()[:3])[:30000], encoding="utf-8")
    return p


def _spec(text_file: Path, **kw) -> CalibrationSpec:
    base = dict(source="text", path=str(text_file), samples=10, seq_len=32, enforce_sample_range=False)
    base.update(kw)
    return CalibrationSpec(**base)


@pytest.fixture(scope="module")
def windows(model_dir: Path, text_file: Path) -> np.ndarray:
    return calibration_windows(_spec(text_file), load_tokenizer(str(model_dir)))


def _reference(model_dir: Path, windows: np.ndarray):
    """sum x^2 per linear and ffn_down max |in| / |out| from hooks on a full-model forward pass."""
    from transformers import AutoModelForCausalLM

    src = open_model(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    sums: dict[str, np.ndarray] = {}
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def hook(name):
        def fn(mod, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0).numpy()
            mi, mo = x.abs().amax(0).float().numpy(), out.detach().reshape(-1, out.shape[-1]).abs().amax(0).numpy()
            old = ranges.get(name)
            ranges[name] = (mi, mo) if old is None else (np.maximum(old[0], mi), np.maximum(old[1], mo))
        return fn

    for n, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            (name,) = src.gguf_names_of(n + ".weight")
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.from_numpy(windows))
    return sums, ranges


def test_sequential_equals_full_forward(model_dir: Path, windows: np.ndarray) -> None:
    src = open_model(model_dir)
    result = run_calibration(src, windows, options=OPTS, quiet=True)
    ref, ranges = _reference(model_dir, windows)
    assert set(result.stats) == set(ref)  # every linear + output.weight
    assert "output.weight" in result.stats and len(result.stats) == 7 * N_LAYERS + 1
    for name, want in ref.items():
        st = result.stats[name]
        assert st.count == windows.size
        np.testing.assert_allclose(st.sum2, want, rtol=1e-9, err_msg=name)
    for layer in range(N_LAYERS):
        mi, mo = ranges[f"blk.{layer}.ffn_down.weight"]
        np.testing.assert_allclose(result.down_proj_max_in[layer], mi, rtol=1e-6)
        np.testing.assert_allclose(result.down_proj_max_out[layer], mo, rtol=1e-6)


def test_spilled_cache_and_observers(model_dir: Path, windows: np.ndarray) -> None:
    class Counter(LinearObserver):
        key = "counter"
        needs_output = True

        def __init__(self):
            self.seen: dict[str, int] = {}

        def wants(self, name):
            return name.endswith("attn_v.weight")

        def observe(self, layer, name, x, y):
            assert y is not None and y.shape[0] == x.shape[0]
            self.seen[name] = self.seen.get(name, 0) + x.shape[0]

    src = open_model(model_dir)
    a = run_calibration(src, windows, options=OPTS, quiet=True)
    counter = Counter()
    spill = RunnerOptions(device="cpu", batch_tokens=96, max_cache_bytes=0)
    b = run_calibration(src, windows, options=spill, observers=[counter], quiet=True)
    assert all(a.stats[n].equals(b.stats[n]) for n in a.stats)  # memmap cache: same bits
    assert counter.seen == {f"blk.{i}.attn_v.weight": windows.size for i in range(N_LAYERS)}


def test_tied_qwen2_has_no_output_entry(tiny_qwen2_dir: Path, text_file: Path) -> None:
    data = compute_imatrix(tiny_qwen2_dir, _spec(text_file, samples=4), None, options=OPTS, quiet=True)
    assert "output.weight" not in data and "blk.1.ffn_down.weight" in data
    assert data.entries["blk.0.attn_q.weight"].counts[0] == 4 * 32


_CHILD = """
import json, sys
from aqrecipe.calibration.data import CalibrationSpec
from aqrecipe.calibration.runner import RunnerOptions
from aqrecipe.imatrix import compute_imatrix
a = json.loads(sys.argv[1])
compute_imatrix(a["model"], CalibrationSpec(**a["spec"]), a["work"], output=a["out"],
                options=RunnerOptions(**a["options"]), quiet=True)
"""


@pytest.mark.parametrize("mode, env, cache", [("after", KILL_AFTER_ENV, 2 << 30),
                                              ("during", KILL_DURING_ENV, 0)])
def test_sigkill_then_resume_gives_identical_bytes(model_dir, text_file, tmp_path, mode, env, cache) -> None:
    k = random.Random(f"aqrecipe-kill-{mode}").randrange(N_LAYERS)
    print(f"killing the run {mode} stage {k}")
    spec = _spec(text_file)
    options = dict(device="cpu", batch_tokens=96, max_cache_bytes=cache)
    work, out = tmp_path / "work", tmp_path / "killed.gguf"
    args = json.dumps({"model": str(model_dir), "spec": spec.to_dict(), "work": str(work), "out": str(out),
                       "options": options})
    child_env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **{env: str(k)})
    proc = subprocess.run([sys.executable, "-c", _CHILD, args], env=child_env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not out.exists()
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["completed"] == (k + 1 if mode == "after" else k)

    compute_imatrix(model_dir, spec, work, output=out, options=RunnerOptions(**options), quiet=True)
    fresh = tmp_path / "fresh.gguf"
    compute_imatrix(model_dir, spec, tmp_path / "work2", output=fresh, options=RunnerOptions(**options), quiet=True)
    assert out.read_bytes() == fresh.read_bytes()
    assert len(load_imatrix(out)) == 7 * N_LAYERS + 1


def test_changed_fingerprint_is_refused(model_dir, text_file, tmp_path) -> None:
    work = tmp_path / "work"
    compute_imatrix(model_dir, _spec(text_file, samples=4), work, options=OPTS, quiet=True)
    with pytest.raises(ResumeError, match=r"changed: calibration data\b"):
        compute_imatrix(model_dir, _spec(text_file, samples=4, seed=1), work, options=OPTS, quiet=True)
    with pytest.raises(ResumeError, match=r"changed: options") as err:
        compute_imatrix(model_dir, _spec(text_file, samples=4), work,
                        options=RunnerOptions(device="cpu", batch_tokens=64), quiet=True)
    assert "restart" in err.value.hint
    data = compute_imatrix(model_dir, _spec(text_file, samples=4, seed=1), work, options=OPTS,
                           restart=True, quiet=True)
    assert data.chunk_count == 4
    manifest = json.loads((work / "manifest.json").read_text())
    manifest["components"]["model"] = "0" * 64
    manifest["fingerprint"] = "x"
    (work / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResumeError, match=r"changed: model\)"):
        compute_imatrix(model_dir, _spec(text_file, samples=4, seed=1), work, options=OPTS, quiet=True)


def test_lock_contention(tmp_path: Path) -> None:
    comps = {"model": "m", "calibration": "c", "options": "o", "version": "v"}
    with WorkDir(tmp_path, comps, n_stages=3):
        with pytest.raises(ResumeError, match="in use by another run"):
            WorkDir(tmp_path, comps, n_stages=3)
        code = ("import sys; from aqrecipe.calibration.checkpoint import WorkDir\n"
                "from aqrecipe.errors import ResumeError\n"
                f"try:\n WorkDir({str(tmp_path)!r}, {comps!r}, n_stages=3)\n"
                "except ResumeError as e:\n print('locked'); sys.exit(0)\nsys.exit(1)")
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "locked"
    with WorkDir(tmp_path, comps, n_stages=3) as w:  # released on exit
        assert w.completed == 0


def test_calibration_data_errors(model_dir: Path, text_file: Path) -> None:
    tok = load_tokenizer(str(model_dir))
    with pytest.raises(CalibrationDataError, match=r"need 102400") as err:
        calibration_windows(_spec(text_file, samples=200, seq_len=512, enforce_sample_range=True), tok)
    assert "at most" in err.value.hint
    with pytest.raises(CalibrationDataError, match="128..1024"):
        CalibrationSpec(samples=64)
    with pytest.raises(CalibrationDataError, match="needs a path"):
        CalibrationSpec(source="text")
    with pytest.raises(CalibrationDataError, match="unknown calibration source"):
        CalibrationSpec(source="web")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(CalibrationDataError) as err:
            calibration_windows(CalibrationSpec(source="hf-dataset", name="wikitext",
                                                config="wikitext-2-raw-v1"), tok)
        text = str(err.value)
        assert "builtin-wiki" in text and "jsonl" in text and "WikiText-2" in text


def test_windows_are_deterministic(model_dir: Path, text_file: Path) -> None:
    tok = load_tokenizer(str(model_dir))
    a = calibration_windows(_spec(text_file), tok)
    b = calibration_windows(_spec(text_file), tok)
    c = calibration_windows(_spec(text_file, seed=5), tok)
    assert a.shape == (10, 32) and a.dtype == np.int64
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.slow
def test_demo_model_imatrix(demo_model_dir: Path, tmp_path: Path) -> None:
    spec = CalibrationSpec(samples=128, seq_len=128)
    out = tmp_path / "demo.gguf"
    data = compute_imatrix(demo_model_dir, spec, tmp_path / "work", output=out, quiet=True)
    src = open_model(demo_model_dir)
    from aqrecipe.imatrix import check_against_model

    match = check_against_model(load_imatrix(out), src)
    assert not match.partial and len(match.matched) == 7 * src.arch.n_layers  # tied: no output.weight
    for name in data.names:
        imp = data.importance(name)
        assert np.isfinite(imp).all() and (imp > 0).any()
