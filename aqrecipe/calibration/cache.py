"""The hidden-state cache between decoder layers: ``[samples, seq_len, hidden]`` float32.

Small caches live in memory and are updated in place (each sample is independent,
so a batch's output can overwrite its own input). Caches above ``max_bytes`` are
two files in the work folder, read and written one batch of samples at a time
with ``pread``/``pwrite``: stage ``k`` reads ``hidden-{k % 2}`` and writes the
other, so the buffer a checkpoint points at is never overwritten mid-stage.
(Memory maps would not bound the process: every page a map has touched counts in
its resident size until the kernel evicts it.) With a work folder, the in-memory
cache is written to the same file names (atomically) after each stage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aqrecipe.calibration.checkpoint import WorkDir
from aqrecipe.formats.fileio import atomic_output


class SpilledRows:
    """A ``[samples, ...]`` float32 array in a file, read and written by sample ranges.

    Supports exactly what the runner does with the cache: ``rows[s0:s1]`` returns a
    new array, ``rows[s0:s1] = values`` writes one. Nothing is mapped, so the data
    stay in the page cache and out of the process's resident memory.
    """

    def __init__(self, path: Path, shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.shape = shape
        self.row_bytes = int(np.prod(shape[1:])) * 4
        nbytes = shape[0] * self.row_bytes
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size != nbytes:
            os.ftruncate(self.fd, nbytes)  # a reused file of the right size keeps its bytes

    def _rows(self, key: slice) -> tuple[int, int]:
        if not isinstance(key, slice):
            raise TypeError("a spilled cache is addressed by sample ranges only")
        s0, s1, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("a spilled cache is addressed by contiguous sample ranges only")
        return s0, max(s0, s1)

    def __getitem__(self, key: slice) -> np.ndarray:
        s0, s1 = self._rows(key)
        out = np.empty((s1 - s0, *self.shape[1:]), dtype=np.float32)
        buf, pos = memoryview(out).cast("B"), s0 * self.row_bytes
        done = 0
        while done < len(buf):
            got = os.preadv(self.fd, [buf[done:]], pos + done)
            if got <= 0:
                raise OSError(f"{self.path}: ends before sample {s1}")
            done += got
        return out

    def __setitem__(self, key: slice, values: np.ndarray) -> None:
        s0, s1 = self._rows(key)
        data = np.ascontiguousarray(values, dtype=np.float32)
        if data.shape != (s1 - s0, *self.shape[1:]):
            raise ValueError(f"expected shape {(s1 - s0, *self.shape[1:])}, got {data.shape}")
        buf, pos = memoryview(data).cast("B"), s0 * self.row_bytes
        done = 0
        while done < len(buf):
            done += os.pwrite(self.fd, buf[done:], pos + done)

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class ActivationCache:
    def __init__(self, shape: tuple[int, int, int], *, max_bytes: int, folder: Path,
                 work: WorkDir | None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.nbytes = int(np.prod(self.shape)) * 4
        self.spilled = self.nbytes > max_bytes
        self.folder = Path(folder)
        self.work = work
        self._mem: np.ndarray | None = None
        self._files: dict[int, SpilledRows] = {}

    def _path(self, parity: int) -> Path:
        return self.folder / f"hidden-{parity}.f32"

    def _file(self, parity: int) -> SpilledRows:
        f = self._files.get(parity)
        if f is None:
            f = self._files[parity] = SpilledRows(self._path(parity), self.shape)
        return f

    # --- the two sides of a stage -------------------------------------------------
    def source(self, stage: int) -> np.ndarray | SpilledRows:
        """The hidden states entering ``stage`` (slice it by samples)."""
        if self.spilled:
            return self._file(stage % 2)
        assert self._mem is not None
        return self._mem

    def target(self, stage: int) -> np.ndarray | SpilledRows:
        """Where ``stage`` writes its output (the same array in memory mode)."""
        if self.spilled:
            return self._file((stage + 1) % 2)
        assert self._mem is not None
        return self._mem

    # --- initial state ------------------------------------------------------------
    def init_embeddings(self) -> np.ndarray | SpilledRows:
        """Where the embeddings (the input of stage 0) are written, by sample ranges."""
        if self.spilled:
            return self._file(0)
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
            f = self._files.get(next_stage % 2)
            if f is not None:
                f.flush()
        elif self.work is not None:
            assert self._mem is not None
            with atomic_output(self._path(next_stage % 2)) as fh:
                self._mem.tofile(fh)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._mem = None
