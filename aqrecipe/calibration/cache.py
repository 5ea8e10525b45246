"""The hidden-state cache between decoder layers: ``[samples, seq_len, hidden]`` float32.

Small caches live in memory and are updated in place (each sample is independent,
so a batch's output can overwrite its own input). Caches above ``max_bytes`` are
two disk-backed ``np.memmap`` buffers in the work folder: stage ``k`` reads
``hidden-{k % 2}`` and writes the other, so the buffer a checkpoint points at is
never overwritten mid-stage. With a work folder, the in-memory cache is written
to the same file names (atomically) after each stage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aqrecipe.calibration.checkpoint import WorkDir, write_bytes_atomic


class ActivationCache:
    def __init__(self, shape: tuple[int, int, int], *, max_bytes: int, folder: Path,
                 work: WorkDir | None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.nbytes = int(np.prod(self.shape)) * 4
        self.spilled = self.nbytes > max_bytes
        self.folder = Path(folder)
        self.work = work
        self._mem: np.ndarray | None = None
        self._maps: dict[int, np.memmap] = {}

    def _path(self, parity: int) -> Path:
        return self.folder / f"hidden-{parity}.f32"

    def _map(self, parity: int, mode: str) -> np.memmap:
        m = self._maps.get(parity)
        if m is None:
            path = self._path(parity)
            if mode == "w+" and path.exists() and path.stat().st_size == self.nbytes:
                mode = "r+"  # reuse the file; every row is rewritten
            m = np.memmap(path, dtype=np.float32, mode=mode, shape=self.shape)
            self._maps[parity] = m
        return m

    # --- the two sides of a stage -------------------------------------------------
    def source(self, stage: int) -> np.ndarray:
        """The hidden states entering ``stage``."""
        if self.spilled:
            return self._map(stage % 2, "r+")
        assert self._mem is not None
        return self._mem

    def target(self, stage: int) -> np.ndarray:
        """Where ``stage`` writes its output (the same array in memory mode)."""
        if self.spilled:
            return self._map((stage + 1) % 2, "w+")
        assert self._mem is not None
        return self._mem

    # --- initial state ------------------------------------------------------------
    def init_embeddings(self) -> np.ndarray:
        """A writable array for the embeddings (the input of stage 0)."""
        if self.spilled:
            return self._map(0, "w+")
        self._mem = np.empty(self.shape, dtype=np.float32)
        return self._mem

    def restore(self, stage: int) -> None:
        """Load the hidden states entering ``stage`` from the work folder."""
        path = self._path(stage % 2)
        if not path.exists() or path.stat().st_size != self.nbytes:
            raise FileNotFoundError(path)
        if not self.spilled:
            self._mem = np.fromfile(path, dtype=np.float32).reshape(self.shape)

    def persist(self, next_stage: int) -> None:
        """Make the input of ``next_stage`` durable before the manifest says so."""
        if self.spilled:
            m = self._maps.get(next_stage % 2)
            if m is not None:
                m.flush()
        elif self.work is not None:
            assert self._mem is not None
            data = self._mem
            write_bytes_atomic(self._path(next_stage % 2), lambda fh: data.tofile(fh))

    def close(self) -> None:
        for m in self._maps.values():
            m.flush()
        self._maps.clear()
        self._mem = None
