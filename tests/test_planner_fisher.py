"""The planner's KLD sensitivity (issue 17): the diagonal Fisher of the model's own predictions
predicts the KLD probes, and measurement type fisher feeds it to the solver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aqrecipe.models import open_model
from aqrecipe.planner import MeasurementSpec, measure
from aqrecipe.planner.fit import spearman

pytest.importorskip("torch")

CANDS = ("Q2_K", "Q4_0", "Q4_K", "Q8_0")


def test_fisher_predicts_single_tensor_probes(tiny_llama_dir: Path) -> None:
    from aqrecipe.planner.fisher import fisher_kld, kld_sensitivity
    from aqrecipe.planner.kld import KldProbe, calibration_token_windows, hf_weight_of, probe_can_swap
    from aqrecipe.planner.proxy import round_trip

    source = open_model(tiny_llama_dir)
    probe = KldProbe(source, calibration_token_windows(source, 8, 32, 0))
    names = [t.gguf_name for t in source.tensors if len(t.shape) == 2 and probe_can_swap(source, t.gguf_name)]
    sens = kld_sensitivity(probe, [source.tensor(n).hf_name for n in names])
    predicted, measured = [], []
    for name in names:
        hf_name, w = hf_weight_of(source, name)
        assert sens[hf_name].shape == w.shape and (sens[hf_name] >= 0).all()
        w_hat = round_trip(w, "Q4_0", None)
        predicted.append(fisher_kld(sens[hf_name], w, w_hat))
        measured.append(probe.kld(hf_name, w_hat))
    assert spearman(predicted, measured) > 0.9
    big = [k / f for f, k in zip(predicted, measured) if k > 1e-3 * max(measured)]  # above float32 noise
    assert len(big) >= len(names) // 2 and 0.7 < float(np.median(big)) < 1.4
    again = kld_sensitivity(probe, [source.tensor(names[0]).hf_name])
    assert np.array_equal(again[source.tensor(names[0]).hf_name], sens[source.tensor(names[0]).hf_name])


def test_fisher_measurement_estimates_every_option_and_corrects_per_type(tiny_llama_dir: Path, tmp_path: Path) -> None:
    source = open_model(tiny_llama_dir)
    spec = MeasurementSpec(type="fisher", samples=4, seq_len=32, calibrate_tensors=4)
    m = measure(source, None, CANDS, spec, tmp_path)
    assert m.method == "fisher"
    for t in m.tensors:
        assert all(o.fisher is not None and o.fisher >= 0 for o in t.options)
        by = {o.type: o for o in t.options}
        assert by["Q8_0"].fisher < by["Q4_0"].fisher
    probed = [(o.type, o.fisher, o.kld) for t in m.tensors for o in t.options if o.kld is not None]
    assert probed and set(m.calibration.fisher_bias) <= {p[0] for p in probed}
    unprobed = next(o for t in m.tensors for o in t.options if o.kld is None)
    owner = next(t for t in m.tensors if unprobed in t.options)
    assert m.predicted(owner, unprobed) == pytest.approx(
        np.exp(m.calibration.fisher_bias.get(unprobed.type, 0.0)) * unprobed.fisher)
    again = measure(source, None, CANDS, spec, tmp_path)  # reused from the work folder
    assert again == m
