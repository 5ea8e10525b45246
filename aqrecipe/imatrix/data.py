"""ImatrixData: llama.cpp-compatible importance matrices in memory.

Per weight (llama.cpp tensor name, e.g. ``blk.3.ffn_down.weight``) we keep what
llama.cpp's GGUF imatrix stores: ``in_sum2`` (sum of x^2 over tokens, float32,
``[n_mat, n_cols]`` with ``n_mat = 1`` for dense weights and one row per expert
for stacked MoE weights), ``counts`` (tokens seen, float32 ``[n_mat]``) and
optionally ``in_sum`` (sum of x). The importance of a column is
``in_sum2 / counts`` = mean x^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np


@dataclass
class ImatrixEntry:
    in_sum2: np.ndarray  # float32 [n_mat, n_cols]
    counts: np.ndarray  # float32 [n_mat]
    in_sum: np.ndarray | None = None  # float32 [n_mat, n_cols]

    def __post_init__(self) -> None:
        self.in_sum2 = np.ascontiguousarray(np.atleast_2d(self.in_sum2), dtype=np.float32)
        self.counts = np.ascontiguousarray(np.asarray(self.counts, dtype=np.float32).reshape(-1))
        if self.in_sum is not None:
            self.in_sum = np.ascontiguousarray(np.atleast_2d(self.in_sum), dtype=np.float32)
            if self.in_sum.shape != self.in_sum2.shape:
                raise ValueError(f"in_sum {self.in_sum.shape} and in_sum2 {self.in_sum2.shape} differ")
        if self.in_sum2.ndim != 2 or self.counts.shape != (self.in_sum2.shape[0],):
            raise ValueError(f"in_sum2 {self.in_sum2.shape} needs one count per row, got {self.counts.shape}")

    @property
    def n_mat(self) -> int:
        return int(self.in_sum2.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.in_sum2.shape[1])

    def importance(self) -> np.ndarray:
        """mean x^2 per column, float32 ``[n_cols]`` (dense) or ``[n_mat, n_cols]`` (experts).

        A row that saw no token (an expert the router never chose) gets the mean importance of the
        rows that did, each normalised to mean 1, so an unseen expert is weighted like a typical one
        of the same tensor; with no row seen at all, 1.0 (neutral weighting, as llama.cpp does).
        """
        counts = self.counts.astype(np.float64)[:, None]
        seen = counts[:, 0] > 0
        mean = np.ones(self.in_sum2.shape, dtype=np.float64)
        mean[seen] = self.in_sum2[seen].astype(np.float64) / counts[seen]
        if self.n_mat > 1 and seen.any() and not seen.all():
            rows = mean[seen]
            scale = rows.mean(axis=1, keepdims=True)
            typical = (rows / np.where(scale > 0, scale, 1.0)).mean(axis=0)
            mean[~seen] = typical
        mean = mean.astype(np.float32)
        return mean[0] if self.n_mat == 1 else mean

    @property
    def unseen(self) -> int:
        """Rows (experts) that saw no token."""
        return int((self.counts <= 0).sum())

    def equals(self, other: "ImatrixEntry", *, with_in_sum: bool = True) -> bool:
        same = (self.in_sum2.shape == other.in_sum2.shape
                and self.in_sum2.tobytes() == other.in_sum2.tobytes()
                and self.counts.tobytes() == other.counts.tobytes())
        if with_in_sum:
            a, b = self.in_sum, other.in_sum
            same = same and ((a is None and b is None) or
                             (a is not None and b is not None and a.tobytes() == b.tobytes()))
        return same


@dataclass
class ImatrixData:
    """An importance matrix: entries by weight name plus llama.cpp's metadata."""

    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return sorted(self.entries)

    def importance(self, name: str) -> np.ndarray | None:
        """mean x^2 per input column of weight ``name``, or None when it has no entry."""
        entry = self.entries.get(name)
        return None if entry is None else entry.importance()

    def equals(self, other: "ImatrixData", *, with_in_sum: bool = True) -> bool:
        return (
            self.names == other.names
            and list(self.datasets) == list(other.datasets)
            and self.chunk_count == other.chunk_count
            and self.chunk_size == other.chunk_size
            and all(self.entries[n].equals(other.entries[n], with_in_sum=with_in_sum) for n in self.names)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (no arrays)."""
        return {
            "datasets": list(self.datasets),
            "chunk_count": self.chunk_count,
            "chunk_size": self.chunk_size,
            "entries": {n: {"n_cols": e.n_cols, "n_mat": e.n_mat, "counts": e.counts.tolist()}
                        for n, e in sorted(self.entries.items())},
        }

    @property
    def unseen_experts(self) -> dict[str, int]:
        """Merged-expert tensors with experts that saw no token: name -> how many."""
        return {n: e.unseen for n, e in self.entries.items() if e.n_mat > 1 and e.unseen}

    @classmethod
    def from_channel_stats(cls, stats: Mapping[str, Any], *, datasets: list[str],
                           chunk_count: int, chunk_size: int) -> "ImatrixData":
        """Build from :class:`~aqrecipe.calibration.stats.ChannelStats` keyed by weight name; the keys of
        one merged-expert tensor (``name#0``, ``name#1``, ...) become its rows, in expert order."""
        from aqrecipe.models.tensor_names import split_expert_key

        grouped: dict[str, dict[int, Any]] = {}
        for key, st in stats.items():
            name, expert = split_expert_key(key)
            grouped.setdefault(name, {})[-1 if expert is None else expert] = st
        entries = {}
        for name, rows in grouped.items():
            order = sorted(rows)
            if len(order) > 1 and order != list(range(len(order))):
                raise ValueError(f"{name}: statistics of experts {order}, expected 0..{len(order) - 1}")
            sts = [rows[k] for k in order]
            entries[name] = ImatrixEntry(
                in_sum2=np.stack([st.sum2 for st in sts]).astype(np.float32),
                counts=np.array([st.count for st in sts], dtype=np.float32),
                in_sum=np.stack([st.sum1 for st in sts]).astype(np.float32),
            )
        return cls(entries, list(datasets), int(chunk_count), int(chunk_size))
