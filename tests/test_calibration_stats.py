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

from aqrecipe.calibration.stats import ChannelStats, update_absmax

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
    blocks = _blocks(0, 200, [3000, 1, 517, 2502])  # row counts that are not multiples of 4
    a, b = _run(blocks, "numba"), _run(blocks, "numpy")
    assert a.equals(b)
    assert a.count == b.count == 6020


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


def test_opposite_infinities_give_a_nan_sum_but_an_infinite_max() -> None:
    """+inf and -inf in one column: sum NaN, max |x| inf (the kernel's NaN rescan must not say NaN)."""
    first, second = _blocks(5, 140, [60, 40])
    first[3, 70], first[8, 70] = np.inf, -np.inf
    second[2, 70] = 1.0
    second[5, 139] = np.nan  # a NaN in a later batch, last column of the last slice
    a, b = _run([first, second], "numba"), _run([first, second], "numpy")
    assert a.equals(b)
    assert np.isnan(a.sum1[70]) and a.absmax[70] == np.inf and np.isnan(a.absmax[139])


@settings(max_examples=25, deadline=None)
@given(
    n_channels=st.integers(1, 300),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    specials=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([np.nan, np.inf, -np.inf])),
                      max_size=3),
    seed=st.integers(0, 2**16),
)
def test_property_absmax_numba_equals_numpy(n_channels: int, sizes: list[int],
                                            specials: list[tuple[int, float]], seed: int) -> None:
    blocks = _blocks(seed, n_channels, sizes)
    for pos, value in specials:
        block = blocks[pos % len(blocks)]
        if block.size:
            block.flat[pos % block.size] = value
    results = []
    for backend in ("numba", "numpy"):
        acc = np.zeros(n_channels, np.float32)
        for block in blocks:
            update_absmax(acc, block, backend)  # type: ignore[arg-type]
        results.append(acc.tobytes())
    assert results[0] == results[1]


def test_absmax_refuses_a_wrong_block() -> None:
    with pytest.raises(ValueError, match="float32"):
        update_absmax(np.zeros(4, np.float32), np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="float32"):
        update_absmax(np.zeros(4, np.float32), np.zeros((2, 4), np.float64))


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
from aqrecipe.calibration.stats import ChannelStats, update_absmax
rng = np.random.default_rng(11)
x = (rng.standard_normal((300, 77)) * 3).astype(np.float32)
x[20, 9], x[40, 9], x[50, 10] = np.inf, -np.inf, np.nan
s = ChannelStats(77)
s.update(x[:100]); s.update(x[100:])
m = np.zeros(77, np.float32)
update_absmax(m, x[:100]); update_absmax(m, x[100:])
out = {k: v.tobytes().hex() for k, v in s.to_arrays().items()}
out["absmax_only"] = m.tobytes().hex()
print(json.dumps(out))
"""


def test_pure_python_kernel_matches_jit() -> None:
    """NUMBA_DISABLE_JIT=1 runs the kernel as plain Python: same bits as the compiled one."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    interpreted = json.loads(out.stdout)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((300, 77)) * 3).astype(np.float32)
    x[20, 9], x[40, 9], x[50, 10] = np.inf, -np.inf, np.nan
    s = ChannelStats(77)
    s.update(x)
    m = np.zeros(77, np.float32)
    update_absmax(m, x, "numpy")
    compiled = {k: v.tobytes().hex() for k, v in s.to_arrays().items()}
    compiled["absmax_only"] = m.tobytes().hex()
    assert interpreted == compiled


def test_import_does_not_compile_or_import_numba() -> None:
    code = ("import sys, aqrecipe, aqrecipe.calibration, aqrecipe.calibration.stats, aqrecipe.imatrix;"
            "print('numba' in sys.modules, 'torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_down_proj_ranges_read_max_in_from_the_input_stats() -> None:
    """Fused (max_in taken from InputStatsObserver) and standalone observers agree, also after a resume."""
    from aqrecipe.calibration.observers import DownProjRanges, InputStatsObserver

    name = "blk.3.ffn_down.weight"
    xs, ys = _blocks(7, 96, [50, 9]), _blocks(8, 40, [50, 9])
    xs[1][4, 17] = np.nan
    stats = InputStatsObserver()
    fused, alone = DownProjRanges(input_stats=stats), DownProjRanges(backend="numpy")
    for x, y in zip(xs, ys):
        stats.observe(3, name, x, None)
        fused.observe(3, name, x, y)
        alone.observe(3, name, x, y)
    assert fused.max_in[3].tobytes() == alone.max_in[3].tobytes()
    assert fused.max_out[3].tobytes() == alone.max_out[3].tobytes()
    assert np.isnan(fused.max_in[3][17])
    assert set(fused.layer_state(3)) == {"max_out"} and set(alone.layer_state(3)) == {"max_in", "max_out"}

    restored_stats = InputStatsObserver()
    restored_stats.restore_layer_state(3, stats.layer_state(3))
    restored = DownProjRanges(input_stats=restored_stats)
    restored.restore_layer_state(3, fused.layer_state(3))
    assert restored.max_in[3].tobytes() == alone.max_in[3].tobytes()
