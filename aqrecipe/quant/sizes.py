"""Exact sizes: the bytes a tensor takes in a block type (the one home of that arithmetic)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aqrecipe.quant.blocktypes import layout


def tensor_bytes(type_name: str, shape: Sequence[int]) -> int:
    """Exact bytes of a tensor of ``shape`` (HF order, rows of ``shape[-1]`` weights) in ``type_name``.

    A 0-d shape is one row of one weight.
    """
    row_len = int(shape[-1]) if len(shape) else 1
    n_rows = math.prod(int(d) for d in shape[:-1])
    return n_rows * layout(type_name).row_bytes(row_len)
