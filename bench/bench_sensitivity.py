"""How well each error model predicts the KLD a single quantized tensor causes (issue 17).

What: on the float model (:func:`bench.float_model.float_demo`: no block type is lossless there), for
the tensors of layers 0, 3, 7, ..., 29 and the embedding, at Q3_K, Q4_K and Q6_K (llama.cpp's
fallback where a row does not fit), three numbers per (tensor, type):

- ``kld``: the KLD probe, the mean per-token KL divergence of the model with only that tensor
  quantized from the float model, on 8 x 128 tokens of the built-in calibration split;
- ``proxy``: the imatrix-weighted relative weight error (``measurement: {type: proxy}``), turned into
  KLD by its per-role log-space calibration fitted on a third of the tensors (as the planner fits it
  on its ``calibrate_tensors``), scored on the other two thirds;
- ``fisher``: the diagonal-Fisher estimate (``measurement: {type: fisher}``), uncalibrated.

Reported: Spearman's rank correlation with the probes across tensors at each type (can the model tell
which tensors are sensitive?) and the rms of log(kld / prediction) on the held-out tensors (how far
off is a prediction, as a factor: exp(rms)). The importance weights are an imatrix computed on the
probes' own windows (the tied embedding, which has none, is weighted as the output head, as in the
planner).

    .venv/bin/python bench/bench_sensitivity.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

LAYERS = (0, 3, 7, 11, 15, 19, 23, 27, 29)
TYPES = ("Q3_K", "Q4_K", "Q6_K")


def calibrated_rms(rows: list[dict], train: set[str]) -> tuple[float, float]:
    """The planner's proxy calibration (:func:`aqrecipe.planner.fit.fit_calibration`) fitted on the
    ``train`` tensors' probes; (its slope, rms log error of its predictions on the other tensors)."""
    from aqrecipe.planner.fit import fit_calibration
    from aqrecipe.planner.measurement import Measurement, TensorMeasurement, TypeOption

    fitted = tuple(TensorMeasurement(name, name, rows_[0]["role"], None, (), 0,
                                     tuple(TypeOption(r["type"], 0, r["proxy"], r["kld"]) for r in rows_))
                   for name in sorted(train) for rows_ in [[r for r in rows if r["tensor"] == name]])
    cal = fit_calibration(Measurement("bench", "bench", (), "proxy", fitted, fixed_bytes=0, fixed_params=0))
    errors = [math.log(r["kld"] / cal.predict(r["role"], r["proxy"])) for r in rows if r["tensor"] not in train]
    return cal.slope, float(np.sqrt(np.mean(np.square(errors))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="write the rows and the summary here")
    args = ap.parse_args()
    import torch

    from bench_vs_llamacpp import cpu_info, cpu_line
    from float_model import float_demo

    from aqrecipe.calibration.data import CalibrationSpec
    from aqrecipe.imatrix.compute import compute_imatrix
    from aqrecipe.models import open_model
    from aqrecipe.models.tensor_names import layer_of, role_of
    from aqrecipe.planner.fisher import fisher_kld, kld_sensitivity
    from aqrecipe.planner.fit import spearman
    from aqrecipe.planner.kld import KldProbe, calibration_token_windows, hf_weight_of, probe_can_swap
    from aqrecipe.planner.proxy import proxy_error, round_trip
    from aqrecipe.quant.blocktypes import fallback_for

    torch.set_num_threads(2)
    source = open_model(float_demo())
    t0 = time.perf_counter()
    probe = KldProbe(source, calibration_token_windows(source, 8, 128, 0))
    # the imatrix of the probe's own windows (same split, count, length and seed)
    imatrix = compute_imatrix(source, CalibrationSpec(samples=8, seq_len=128, seed=0, enforce_sample_range=False),
                              quiet=True)
    names = [t.gguf_name for t in source.tensors if len(t.shape) == 2 and probe_can_swap(source, t.gguf_name)
             and (layer_of(t.gguf_name) in LAYERS or layer_of(t.gguf_name) is None)]
    sens = kld_sensitivity(probe, [source.tensor(n).hf_name for n in names])
    fisher_s = time.perf_counter() - t0
    rows = []
    for name in names:
        hf_name, w = hf_weight_of(source, name)
        # the tied token_embd has no imatrix entry: weigh it as the output head, as the planner does
        a = imatrix.importance(name) if name in imatrix.entries else probe.output_importance
        for type_name in TYPES:
            w_hat = round_trip(w, fallback_for(type_name, w.shape[-1]), a.astype(np.float32))
            rows.append({"tensor": name, "role": role_of(name, tied_output=True), "type": type_name,
                         "kld": probe.kld(hf_name, w_hat), "proxy": proxy_error(w, w_hat, a),
                         "fisher": fisher_kld(sens[hf_name], w, w_hat)})
    train = set(names[::3])
    slope, proxy_rms = calibrated_rms(rows, train)
    held = [r for r in rows if r["tensor"] not in train]
    summary = {
        "tensors": len(names), "types": list(TYPES), "windows": "8 x 128 tokens, built-in calibration split",
        "spearman": {t: {k: spearman([r[k] for r in rows if r["type"] == t], [r["kld"] for r in rows if r["type"] == t])
                         for k in ("proxy", "fisher")} for t in TYPES},
        "rms_log_error": {"proxy (per-role calibration on a third)": proxy_rms,
                          "fisher (uncalibrated)": float(np.sqrt(np.mean([math.log(r["kld"] / r["fisher"]) ** 2
                                                                         for r in held])))},
        "proxy_slope": slope,
        "fisher_pass_seconds": round(fisher_s, 1),
        "cpu": cpu_line(cpu_info()),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
