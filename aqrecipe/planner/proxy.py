"""The cheap sensitivity proxy: imatrix-weighted squared error of a quantize-dequantize round trip.

For a weight ``W`` (rows x columns, a GGUF row is one output's input weights)
and per-column importance ``a`` (mean x^2 of the input, from the imatrix)::

    proxy = sum_c a[c] * sum_r (W - W_hat)[r, c]^2  /  sum_c a[c] * sum_r W[r, c]^2

i.e. the expected relative energy of the output error ``(W - W_hat) x`` under
a diagonal input covariance. Normalised per tensor, so it is comparable across
tensors of different sizes; the role calibration maps it to predicted KLD.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def proxy_error(w: np.ndarray, w_hat: np.ndarray, weight: np.ndarray | None,
                row_weights: np.ndarray | None = None) -> float:
    """The normalised imatrix-weighted squared error (0 for a lossless round trip); a 2-D ``weight``
    weighs each expert's rows with its own row (see :func:`round_trip`). ``row_weights``: what each
    row counts for when ``w`` holds a :class:`RowSample`'s rows."""
    w = np.asarray(w, dtype=np.float64).reshape(-1, np.shape(w)[-1])
    r = np.ones(len(w)) if row_weights is None else np.asarray(row_weights, dtype=np.float64)
    num = float(row_energy(w - np.asarray(w_hat, dtype=np.float64).reshape(w.shape), weight) @ r)
    den = float(row_energy(w, weight) @ r)
    return num / den if den > 0 else 0.0


@dataclass(frozen=True)
class RowSample:
    """The rows of a tensor whose round trips stand for all of them.

    Every ggml type quantizes a row on its own, so the round trip of these rows is the tensor's round
    trip there. In each of ``n_groups`` equal row groups (the experts of a merged-expert tensor; the
    same count in each keeps a 2-D importance's groups aligned) the heaviest rows by an energy are
    taken exactly and the others are represented by evenly spaced ones (``exact`` marks which).
    """

    rows: np.ndarray  # sorted row indices
    exact: np.ndarray  # per sampled row: taken for its weight, it stands for itself only
    n_rows: int
    n_groups: int

    def row_weights(self, energy: np.ndarray) -> np.ndarray:
        """What each sampled row counts for in a sum over the tensor's rows: 1 for the exact ones,
        and for the others, per group, the ``energy`` of the rows they stand for over their own (a
        ratio estimate: a row's share of an error follows its share of the energy when the rows'
        relative rounding errors are alike, as for one tensor at one type)."""
        energy = np.asarray(energy, dtype=np.float64)
        per_group = self.n_rows // self.n_groups
        weights = np.ones(len(self.rows))
        group_of = self.rows // per_group
        for g in range(self.n_groups):
            picked = (group_of == g) & ~self.exact
            if not picked.any():
                continue
            group = energy[g * per_group:(g + 1) * per_group]
            stood_for = float(group.sum()) - float(energy[self.rows[(group_of == g) & self.exact]].sum())
            own = float(energy[self.rows[picked]].sum())
            n_stood_for = per_group - int((self.exact & (group_of == g)).sum())
            weights[picked] = stood_for / own if own > 0 else n_stood_for / int(picked.sum())
        return weights


def sample_rows(energy: np.ndarray, n_groups: int, limit: int) -> RowSample | None:
    """``limit`` rows per group: its ``limit // 4`` heaviest by ``energy`` (one value per row; the rows
    a ratio estimate would misjudge most), then evenly spaced ones of the rest. None when a group has
    no more rows than ``limit``, or ``limit`` is 0: every row is used."""
    energy = np.asarray(energy, dtype=np.float64)
    n_rows = len(energy)
    per_group = n_rows // n_groups
    if limit <= 0 or per_group <= limit:
        return None
    n_top = limit // 4
    rows, exact = [], []
    for g in range(n_groups):
        group = energy[g * per_group:(g + 1) * per_group]
        top = np.sort(np.argsort(-group, kind="stable")[:n_top])
        rest = np.setdiff1d(np.arange(per_group), top)
        spread = rest[np.unique(np.rint(np.linspace(0, len(rest) - 1, limit - n_top)).astype(np.int64))]
        chosen = np.concatenate([top, spread])
        order = np.argsort(chosen, kind="stable")
        rows.append(g * per_group + chosen[order])
        exact.append(np.concatenate([np.ones(len(top), bool), np.zeros(len(spread), bool)])[order])
    return RowSample(np.concatenate(rows), np.concatenate(exact), n_rows, n_groups)


def row_energy(w: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """Per row, ``Σ_c a[c] W[r, c]²`` (a 2-D ``weight``: each expert's rows with its own row): the
    denominator of :func:`proxy_error`, and of its numerator with the round trip's error for ``W``."""
    n_groups = len(weight) if weight is not None and np.ndim(weight) == 2 else 1
    w = np.asarray(w, dtype=np.float64).reshape(n_groups, -1, w.shape[-1])
    a = np.broadcast_to(1.0 if weight is None else np.asarray(weight, dtype=np.float64), (n_groups, w.shape[-1]))
    return np.einsum("grc,gc->gr", w * w, a).reshape(-1)


def can_quantize(type_name: str, importance: np.ndarray | None) -> bool:
    """IQ1/IQ2 types need an importance matrix (llama.cpp refuses them without one)."""
    return importance is not None or type_name not in NEEDS_IMATRIX
