"""``Importance``: what a quantizer reads from an importance matrix (:class:`~aqrecipe.imatrix.ImatrixData` is one).

Packing, simulation and the planner's proxies only ask for one weight's column importance;
functions that need the whole matrix (hashing it, boosting it, writing it) take
:class:`~aqrecipe.imatrix.ImatrixData` itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Importance(Protocol):
    def importance(self, name: str) -> np.ndarray | None:
        """mean x^2 per input column of weight ``name`` (``[n_cols]``, or ``[n_mat, n_cols]`` for
        stacked experts), or None when the matrix has no entry for it."""
        ...
