"""Layer-input Hessians ``H = XᵀX / tokens`` for GPTQ rounding, from the calibration pass.

:class:`HessianObserver` rides the same layer-by-layer pass that computes the imatrix: the runner
hands it every linear's input ``X`` ``[tokens, features]``; linears that read one input (q/k/v,
gate/up) share one Hessian, as they share their imatrix statistics. Only the current stage's
Hessians are in memory (float64 sums, ``8 · Σ n_i²`` bytes, plus one float32 ``n²`` product per
batch, and at the spill the float32 means and their serialized copy, another ``8 · Σ n_i²``);
when a stage ends they are written, as float32 means, to ``<folder>/hessians-<stage>.npz``
(atomically, before the stage's checkpoint commits, so a resumed run finds every finished stage's
file) and freed. :class:`HessianStore` reads one tensor's Hessian back at a time for packing.

For a 7B-shaped layer (hidden 4096, ffn 11008: inputs of 4096, 4096, 4096 and 11008 features)
the bound is 16·(3·4096² + 11008²) ≈ 2.55 GiB (plus the runner's activation batch);
``bench/bench_gptq.py hessian`` measured a peak RSS of 2.87 GiB for it (BENCHMARKS.md).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from aqrecipe.calibration.observers import InputStatsObserver, LinearObserver
from aqrecipe.errors import ResumeError
from aqrecipe.formats.fileio import atomic_write_bytes

ALIASES_KEY = "__aliases__"


def stage_file(folder: Path, stage: int) -> Path:
    """The file holding stage ``stage``'s Hessians."""
    return folder / f"hessians-{stage:04d}.npz"


def memory_bound(input_features: list[int]) -> int:
    """Peak bytes of one stage's Hessians for linears reading inputs of these widths (distinct inputs):
    the float64 sums, then at the spill their float32 means and the serialized file's bytes."""
    sums = 8 * sum(n * n for n in input_features)
    return sums + max(4 * max((n * n for n in input_features), default=0), sums)


class HessianObserver(LinearObserver):
    """Accumulates ``XᵀX`` per distinct linear input, one stage at a time, spilled to ``folder``."""

    key = "hessians"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._stats: InputStatsObserver | None = None
        self._stage: int | None = None
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self._written: dict[int, int] = {}
        self.peak_bytes = 0  # largest in-memory Hessian sum of any stage (the measured bound)

    def bind(self, input_stats: InputStatsObserver | None) -> None:
        self._stats = input_stats

    def wants(self, gguf_name: str) -> bool:
        # a linear that reads another one's input (k, v after q; up after gate) shares its Hessian
        return self._stats is None or self._stats.shared_input_of(gguf_name) is None

    def observe(self, layer: int, gguf_name: str, x: np.ndarray, y: np.ndarray | None) -> None:
        if self._stage != layer:
            if self._stage is not None:
                self._flush(self._stage)
            self._stage = layer
        acc = self._sums.get(gguf_name)
        if acc is None:
            acc = self._sums[gguf_name] = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
            self._counts[gguf_name] = 0
            self.peak_bytes = max(self.peak_bytes, sum(a.nbytes for a in self._sums.values()))
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        acc += x32.T @ x32  # float32 BLAS product of one batch, summed in float64
        self._counts[gguf_name] += int(x32.shape[0])

    def layer_state(self, layer: int) -> dict[str, np.ndarray]:
        if self._stage == layer:
            self._flush(layer)
            self._stage = None
        return {"written": np.array([self._written.get(layer, 0)], dtype=np.int64)}

    def restore_layer_state(self, layer: int, arrays: Mapping[str, np.ndarray]) -> None:
        n = int(np.asarray(arrays.get("written", [0])).reshape(-1)[0])
        if n and not stage_file(self.folder, layer).is_file():
            raise ResumeError(
                f"the checkpoint of stage {layer} says its Hessians were written, but "
                f"{stage_file(self.folder, layer)} is missing",
                hint="pass restart=True (--restart) to calibrate again",
            )
        self._written[layer] = n

    def store(self) -> HessianStore:
        """The Hessians of the stages this run wrote or resumed (never a stale file of another run)."""
        return HessianStore(self.folder, stages=sorted(k for k, n in self._written.items() if n))

    def finish(self) -> None:
        """Write the last stage (a run without a work folder never checkpoints it)."""
        if self._stage is not None:
            self._flush(self._stage)
            self._stage = None

    def _flush(self, stage: int) -> None:
        aliases = self._stats.aliases_of(self._sums) if self._stats is not None else {}
        arrays = {name: (acc / max(self._counts[name], 1)).astype(np.float32) for name, acc in self._sums.items()}
        arrays[ALIASES_KEY] = np.array(json.dumps(aliases, sort_keys=True))
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(stage_file(self.folder, stage), buf.getvalue())
        self._written[stage] = len(self._sums)
        self._sums.clear()
        self._counts.clear()


class HessianStore:
    """The Hessians a :class:`HessianObserver` wrote, read one tensor at a time."""

    def __init__(self, folder: str | Path, stages: Iterable[int] | None = None) -> None:
        """``stages``: the stage files to read (default: every ``hessians-*.npz`` in ``folder``)."""
        self.folder = Path(folder)
        self._where: dict[str, tuple[Path, str]] = {}
        paths = (sorted(self.folder.glob("hessians-*.npz")) if stages is None
                 else [stage_file(self.folder, k) for k in stages])
        for path in paths:
            with np.load(path) as npz:
                aliases = json.loads(str(npz[ALIASES_KEY])) if ALIASES_KEY in npz.files else {}
                for key in npz.files:
                    if key != ALIASES_KEY:
                        self._where[key] = (path, key)
                for name, source in aliases.items():
                    self._where[name] = (path, source)

    def __contains__(self, gguf_name: object) -> bool:
        return gguf_name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def names(self) -> Iterator[str]:
        return iter(sorted(self._where))

    def get(self, gguf_name: str) -> np.ndarray | None:
        """``XᵀX / tokens`` of the input ``gguf_name`` multiplies (float32, features × features), or None."""
        where = self._where.get(gguf_name)
        if where is None:
            return None
        with np.load(where[0]) as npz:
            return np.asarray(npz[where[1]], dtype=np.float32)
