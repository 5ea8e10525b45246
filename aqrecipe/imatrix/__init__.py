"""Importance matrices: llama.cpp's GGUF and legacy .dat files, checks, computation.

Reading, writing, showing and checking need only numpy and gguf; computing
(:func:`compute_imatrix`) imports torch lazily.
"""

from __future__ import annotations

from typing import Any

from aqrecipe.imatrix.check import ImatrixMatch, check_against_model, match_imatrix
from aqrecipe.imatrix.data import ImatrixData, ImatrixEntry
from aqrecipe.imatrix.dat_format import decode_dat, encode_dat
from aqrecipe.imatrix.io import convert_imatrix, load_imatrix, save_imatrix
from aqrecipe.imatrix.show import summarize_imatrix


def compute_imatrix(*args: Any, **kwargs: Any) -> ImatrixData:
    """See :func:`aqrecipe.imatrix.compute.compute_imatrix` (imported lazily: it needs torch)."""
    from aqrecipe.imatrix.compute import compute_imatrix as _compute

    return _compute(*args, **kwargs)


__all__ = [
    "ImatrixData",
    "ImatrixEntry",
    "ImatrixMatch",
    "check_against_model",
    "compute_imatrix",
    "convert_imatrix",
    "decode_dat",
    "encode_dat",
    "load_imatrix",
    "match_imatrix",
    "save_imatrix",
    "summarize_imatrix",
]
