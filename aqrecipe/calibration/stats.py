"""Per-input-channel statistics of a linear layer's inputs.

One fused pass over a ``[tokens, channels]`` float32 block accumulates, per
channel, the sum of x^2, the sum of x (both float64), max |x| (float32) and
the token count. Two implementations give bit-identical results:

* ``backend="numba"`` (default): a kernel close to the speed of reading the
  block, compiled on first use (never at ``import aqrecipe``) and cached on disk;
* ``backend="numpy"``: the plain-numpy twin the tests compare against.

Both add tokens to each channel's accumulator one at a time, in row order, in
float64, so the result does not depend on how the tokens were batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Backend = Literal["numba", "numpy"]

# Rows per numpy step: bounds the float64 temporaries of the numpy twin.
_NUMPY_ROWS = 2048


def update_absmax(absmax: np.ndarray, x: np.ndarray, backend: Backend = "numba") -> None:
    """``absmax = max(absmax, |x| per column)`` of a float32 ``[tokens, channels]`` block.

    NaN propagates (as in ``np.maximum``); both backends give the same bits.
    """
    if x.ndim != 2 or x.dtype != np.float32 or absmax.shape != (x.shape[1],):
        raise ValueError(f"expected a float32 [tokens, {absmax.shape[0]}] block, got {x.dtype}{list(x.shape)}")
    if x.shape[0] == 0:
        return
    if backend == "numba":
        from aqrecipe.calibration._kernels import accumulate_absmax

        accumulate_absmax(np.ascontiguousarray(x), absmax)
    elif backend == "numpy":
        np.maximum(absmax, np.abs(x).max(axis=0), out=absmax)
    else:
        raise ValueError(f"unknown statistics backend {backend!r}")


def accumulate_numpy(
    x: np.ndarray, sum2: np.ndarray, sum1: np.ndarray, absmax: np.ndarray
) -> None:
    """The numpy twin of the numba kernel: same sums, same order, same bits."""
    with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as in the kernel
        _accumulate_numpy(x, sum2, sum1, absmax)


def _accumulate_numpy(x: np.ndarray, sum2: np.ndarray, sum1: np.ndarray, absmax: np.ndarray) -> None:
    for start in range(0, x.shape[0], _NUMPY_ROWS):
        block32 = x[start : start + _NUMPY_ROWS]
        block = block32.astype(np.float64)
        # np.add.accumulate is sequential along axis 0: ((acc + x0^2) + x1^2) + ...
        sum2[:] = np.add.accumulate(np.vstack([sum2[None, :], block * block]), axis=0)[-1]
        sum1[:] = np.add.accumulate(np.vstack([sum1[None, :], block]), axis=0)[-1]
        np.maximum(absmax, np.abs(block32).max(axis=0), out=absmax)


@dataclass
class ChannelStats:
    """Running input statistics of one linear layer (mutable runtime state)."""

    n_channels: int
    sum2: np.ndarray = field(default=None)  # type: ignore[assignment]
    sum1: np.ndarray = field(default=None)  # type: ignore[assignment]
    absmax: np.ndarray = field(default=None)  # type: ignore[assignment]
    count: int = 0

    def __post_init__(self) -> None:
        if self.sum2 is None:
            self.sum2 = np.zeros(self.n_channels, dtype=np.float64)
        if self.sum1 is None:
            self.sum1 = np.zeros(self.n_channels, dtype=np.float64)
        if self.absmax is None:
            self.absmax = np.zeros(self.n_channels, dtype=np.float32)
        for name, dtype in (("sum2", np.float64), ("sum1", np.float64), ("absmax", np.float32)):
            arr = getattr(self, name)
            if arr.dtype != dtype or arr.shape != (self.n_channels,):
                raise ValueError(f"{name} must be {np.dtype(dtype).name}[{self.n_channels}]")

    def update(self, block: np.ndarray, backend: Backend = "numba") -> None:
        """Add the rows of a ``[tokens, channels]`` block (any float dtype; used as float32)."""
        x = np.ascontiguousarray(block, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ValueError(f"expected a [tokens, {self.n_channels}] block, got {x.shape}")
        if x.shape[0] == 0:
            return
        if backend == "numba":
            from aqrecipe.calibration._kernels import accumulate_channels

            accumulate_channels(x, self.sum2, self.sum1, self.absmax)
        elif backend == "numpy":
            accumulate_numpy(x, self.sum2, self.sum1, self.absmax)
        else:
            raise ValueError(f"unknown statistics backend {backend!r}")
        self.count += int(x.shape[0])

    # --- derived values ---------------------------------------------------------
    def mean_sq(self) -> np.ndarray:
        """Mean of x^2 per channel (the imatrix importance)."""
        return self.sum2 / max(self.count, 1)

    def mean(self) -> np.ndarray:
        return self.sum1 / max(self.count, 1)

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.sum2).all() and np.isfinite(self.absmax).all())

    # --- persistence ------------------------------------------------------------
    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {
            f"{prefix}sum2": self.sum2,
            f"{prefix}sum1": self.sum1,
            f"{prefix}absmax": self.absmax,
            f"{prefix}count": np.array([self.count], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "") -> "ChannelStats":
        sum2 = np.array(arrays[f"{prefix}sum2"], dtype=np.float64)
        return cls(
            n_channels=int(sum2.shape[0]),
            sum2=sum2,
            sum1=np.array(arrays[f"{prefix}sum1"], dtype=np.float64),
            absmax=np.array(arrays[f"{prefix}absmax"], dtype=np.float32),
            count=int(np.asarray(arrays[f"{prefix}count"]).reshape(-1)[0]),
        )

    def copy(self) -> "ChannelStats":
        return ChannelStats(
            self.n_channels, self.sum2.copy(), self.sum1.copy(), self.absmax.copy(), self.count
        )

    def equals(self, other: "ChannelStats") -> bool:
        """Bitwise equality (NaN equal to NaN)."""
        return (
            self.count == other.count
            and self.sum2.tobytes() == other.sum2.tobytes()
            and self.sum1.tobytes() == other.sum1.tobytes()
            and self.absmax.tobytes() == other.absmax.tobytes()
        )
