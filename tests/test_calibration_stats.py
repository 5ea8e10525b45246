"""Calibration statistics: the numba kernel against its numpy twin (bit for bit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aqrecipe.calibration.stats import ChannelStats

ROOT = Path(__file__).resolve().parents[1]


def _blocks(seed: int, n_channels: int, sizes: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 100.0, n_channels).astype(np.float32)
    return [(rng.standard_normal((n, n_channels)) * scale).astype(np.float32) for n in sizes]


def _run(blocks: list[np.ndarray], backend: str) -> ChannelStats:
    st_ = ChannelStats(blocks[0].shape[1])
    for b in blocks:
        st_.update(b, backend)
    return st_


def test_numba_equals_numpy_bitwise() -> None:
    blocks = _blocks(0, 200, [3000, 1, 517, 2500])  # 200 channels: not a multiple of the 64-block
    a, b = _run(blocks, "numba"), _run(blocks, "numpy")
    assert a.equals(b)
    assert a.count == b.count == 6018


def test_values_match_float64_reference() -> None:
    blocks = _blocks(1, 70, [400, 300])
    x = np.concatenate(blocks).astype(np.float64)
    s = _run(blocks, "numba")
    np.testing.assert_allclose(s.sum2, (x * x).sum(0), rtol=1e-12)
    np.testing.assert_allclose(s.sum1, x.sum(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(s.absmax, np.abs(np.concatenate(blocks)).max(0))
    np.testing.assert_allclose(s.mean_sq(), (x * x).mean(0), rtol=1e-12)


def test_independent_of_how_tokens_are_split() -> None:
    """Tokens are added one at a time in order, so batching does not change a bit."""
    (whole,) = _blocks(2, 96, [1000])
    a = _run([whole], "numba")
    b = _run([whole[:1], whole[1:333], whole[333:]], "numba")
    assert a.equals(b)


def test_nonfinite_values_propagate_like_numpy() -> None:
    (x,) = _blocks(3, 130, [50])
    x[7, 5] = np.nan
    x[9, 100] = np.inf
    a, b = _run([x], "numba"), _run([x], "numpy")
    assert a.equals(b)
    assert np.isnan(a.absmax[5]) and np.isinf(a.absmax[100]) and not a.is_finite()


@settings(max_examples=25, deadline=None)
@given(
    n_channels=st.integers(1, 150),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_property_numba_equals_numpy(n_channels: int, sizes: list[int], seed: int) -> None:
    blocks = _blocks(seed, n_channels, sizes)
    assert _run(blocks, "numba").equals(_run(blocks, "numpy"))


def test_persistence_round_trip() -> None:
    s = _run(_blocks(4, 33, [20]), "numba")
    t = ChannelStats.from_arrays(s.to_arrays(prefix="p:"), prefix="p:")
    assert t.equals(s)
    u = s.copy()
    u.update(np.ones((1, 33), np.float32))
    assert not u.equals(s)


def test_shape_and_backend_errors() -> None:
    s = ChannelStats(8)
    with pytest.raises(ValueError, match=r"\[tokens, 8\]"):
        s.update(np.zeros((4, 9), np.float32))
    with pytest.raises(ValueError, match="backend"):
        s.update(np.zeros((4, 8), np.float32), "cuda")  # type: ignore[arg-type]
    s.update(np.zeros((0, 8), np.float32))
    assert s.count == 0


_SCRIPT = """
import json, sys, numpy as np
from aqrecipe.calibration.stats import ChannelStats
rng = np.random.default_rng(11)
x = (rng.standard_normal((300, 77)) * 3).astype(np.float32)
s = ChannelStats(77)
s.update(x[:100]); s.update(x[100:])
print(json.dumps({k: v.tobytes().hex() for k, v in s.to_arrays().items()}))
"""


def test_pure_python_kernel_matches_jit() -> None:
    """NUMBA_DISABLE_JIT=1 runs the kernel as plain Python: same bits as the compiled one."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    interpreted = json.loads(out.stdout)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((300, 77)) * 3).astype(np.float32)
    s = ChannelStats(77)
    s.update(x)
    compiled = {k: v.tobytes().hex() for k, v in s.to_arrays().items()}
    assert interpreted == compiled


def test_import_does_not_compile_or_import_numba() -> None:
    code = ("import sys, aqrecipe, aqrecipe.calibration, aqrecipe.calibration.stats, aqrecipe.imatrix;"
            "print('numba' in sys.modules, 'torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
