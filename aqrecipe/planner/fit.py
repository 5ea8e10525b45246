"""Proxy vs measured KLD: Spearman rank correlation and the per-role log-space calibration."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from aqrecipe.planner.measurement import Calibration, Measurement


def _ranks(x: Sequence[float]) -> np.ndarray:
    """Average ranks (ties share the mean rank), 0-based."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks); nan for < 2 points or constant input."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry / den) if den > 0 else float("nan")


def measured_pairs(m: Measurement) -> list[tuple[str, str, str, float, float]]:
    """(tensor, role, type, proxy, kld) for every option with a measured KLD."""
    return [(t.gguf_name, t.role, o.type, o.proxy, o.kld)
            for t in m.tensors for o in t.options if o.kld is not None]


def fit_fisher_bias(m: Measurement, *, floor: float = 1e-7) -> dict[str, float]:
    """Per type, the median of ``log(measured KLD / Fisher estimate)`` over the probed options.

    The Fisher estimate is second order: it falls short where a type's error is large enough for the
    KLD to grow faster than quadratically (the 1-2 bit types). Types without a probe above ``floor``
    (numerical noise of a near-lossless type) get no correction."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for t in m.tensors:
        for o in t.options:
            if o.kld is not None and o.fisher is not None and o.kld > floor and o.fisher > 0:
                ratios[o.type].append(math.log(o.kld / o.fisher))
    return {k: float(np.median(v)) for k, v in sorted(ratios.items())}


def fit_calibration(m: Measurement, *, floor: float = 1e-7) -> Calibration:
    """Fit ``log kld = intercept[role] + slope * log proxy`` by least squares.

    One slope shared by all roles, one intercept per role (roles without a
    measurement use the mean intercept). The KLD of an option is its probe's, or
    else its (bias-corrected) Fisher estimate, so with measurement type fisher the
    proxy of tensors no probe can swap (merged experts) is calibrated on every
    dense tensor. KLDs below ``floor`` (numerical noise of a near-lossless type)
    are clamped to it. Also records Spearman's rank correlation of the proxy (and
    of the Fisher estimate) with the probes, pooled, and the proxy's mean within
    each tensor.
    """
    bias = fit_fisher_bias(m, floor=floor)
    base = Calibration(fisher_bias=bias)
    pairs = [(t.gguf_name, t.role, o.type, o.proxy,
              o.kld if o.kld is not None else base.predict_fisher(o.type, o.fisher))
             for t in m.tensors for o in t.options
             if o.proxy > 0 and (o.kld is not None or o.fisher is not None)]
    if len(pairs) < 2:
        return base
    roles = sorted({p[1] for p in pairs})
    lx = np.array([math.log(p[3]) for p in pairs])
    ly = np.array([math.log(max(p[4], floor)) for p in pairs])
    design = np.zeros((len(pairs), len(roles) + 1))
    design[:, 0] = lx
    for i, p in enumerate(pairs):
        design[i, 1 + roles.index(p[1])] = 1.0
    coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
    slope = float(coef[0]) if coef[0] > 0 else 1.0
    if coef[0] <= 0:  # degenerate data: keep a proportional model
        coef[1:] = [float(np.mean([ly[i] - lx[i] for i, p in enumerate(pairs) if p[1] == r])) for r in roles]
    intercepts = {r: float(coef[1 + k]) for k, r in enumerate(roles)}
    probed = [p for p in measured_pairs(m) if p[3] > 0]
    within: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, _, _, proxy, kld in probed:
        within[name].append((proxy, kld))
    rhos = [spearman([a for a, _ in v], [b for _, b in v]) for v in within.values() if len(v) >= 3]
    rhos = [r for r in rhos if not math.isnan(r)]
    fisher_pairs = [(o.fisher, o.kld) for t in m.tensors for o in t.options if o.kld is not None and o.fisher is not None]
    return Calibration(
        slope=slope,
        intercepts=intercepts,
        default_intercept=float(np.mean(list(intercepts.values()))),
        spearman_pooled=spearman([p[3] for p in probed], [p[4] for p in probed]) if probed else None,
        spearman_within_tensor=float(np.mean(rhos)) if rhos else None,
        n_pairs=len(probed),
        fisher_bias=bias,
        spearman_fisher=spearman([a for a, _ in fisher_pairs], [b for _, b in fisher_pairs]) if fisher_pairs else None,
    )
