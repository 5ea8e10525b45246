"""The cheap sensitivity proxy: imatrix-weighted squared error of a quantize-dequantize round trip.

For a weight ``W`` (rows x columns, a GGUF row is one output's input weights)
and per-column importance ``a`` (mean x^2 of the input, from the imatrix)::

    proxy = sum_c a[c] * sum_r (W - W_hat)[r, c]^2  /  sum_c a[c] * sum_r W[r, c]^2

i.e. the expected relative energy of the output error ``(W - W_hat) x`` under
a diagonal input covariance. Normalised per tensor, so it is comparable across
tensors of different sizes; the role calibration maps it to predicted KLD.
"""

from __future__ import annotations

import numpy as np

from aqrecipe.quant import codecs
from aqrecipe.quant.blocktypes import NEEDS_IMATRIX


def round_trip(w: np.ndarray, type_name: str, importance: np.ndarray | None) -> np.ndarray:
    """``dequantize(quantize(w))`` with the importance the packer would use.

    A 2-D ``importance`` (one row per expert of a merged-expert tensor) weighs each expert's rows
    (``w``'s rows split in as many equal groups) with its own row, as the packer does.
    """
    if importance is not None and np.ndim(importance) == 2:
        groups = np.asarray(w).reshape(len(importance), -1, w.shape[-1])
        return np.concatenate([round_trip(g, type_name, imp) for g, imp in zip(groups, importance)]).reshape(w.shape)
    packed = codecs.quantize(w, type_name, importance)
    return codecs.dequantize(packed, type_name, w.shape)


def proxy_error(w: np.ndarray, w_hat: np.ndarray, weight: np.ndarray | None) -> float:
    """The normalised imatrix-weighted squared error (0 for a lossless round trip); a 2-D ``weight``
    weighs each expert's rows with its own row (see :func:`round_trip`)."""
    n_groups = len(weight) if weight is not None and np.ndim(weight) == 2 else 1
    w = np.asarray(w, dtype=np.float64).reshape(n_groups, -1, w.shape[-1])
    d = w - np.asarray(w_hat, dtype=np.float64).reshape(w.shape)
    a = np.broadcast_to(1.0 if weight is None else np.asarray(weight, dtype=np.float64), (n_groups, w.shape[-1]))
    num = float(np.einsum("grc,gc->", d * d, a))
    den = float(np.einsum("grc,gc->", w * w, a))
    return num / den if den > 0 else 0.0


def can_quantize(type_name: str, importance: np.ndarray | None) -> bool:
    """IQ1/IQ2 types need an importance matrix (llama.cpp refuses them without one)."""
    return importance is not None or type_name not in NEEDS_IMATRIX
