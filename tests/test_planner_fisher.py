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


def test_sampled_rows_keep_expert_groups_aligned() -> None:
    from aqrecipe.planner.proxy import sample_rows

    assert sample_rows(np.ones(512), 1, 512) is None and sample_rows(np.ones(4096), 1, 0) is None
    energy = np.ones(3000)
    energy[[5, 1500, 2999]] = 100.0  # one heavy row in each expert
    sample = sample_rows(energy, 3, 12)
    assert sample is not None and len(sample.rows) == 36 and list(sample.rows) == sorted(sample.rows)
    groups = sample.rows.reshape(3, 12)
    assert (groups // 1000 == np.arange(3)[:, None]).all()  # twelve rows from each expert
    assert {5, 1500, 2999} <= set(sample.rows[sample.exact]) and sample.exact.sum() == 9  # 12 // 4 each
    weights = sample.row_weights(energy)
    assert (weights[sample.exact] == 1).all()
    for g in range(3):  # the weighted energy of each expert's sample is the expert's energy
        in_group = groups[g]
        assert weights[g * 12:(g + 1) * 12] @ energy[in_group] == pytest.approx(energy[g * 1000:(g + 1) * 1000].sum())


def test_sampled_fisher_estimate_is_close_to_the_whole_tensor() -> None:
    """Rows of one tensor have alike relative errors but very different sensitivities (token_embd's
    frequent and rare tokens), and a few rows err more (outlier rows): 64 of 4096 rows, the heaviest
    taken exactly, give the full sum within 10 %, where scaling a plain sample by the row count misses it."""
    from aqrecipe.planner.fisher import fisher_energy, fisher_kld
    from aqrecipe.planner.proxy import sample_rows

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 64))
    sens = rng.pareto(1.5, (4096, 1)) * rng.random((1, 64))  # heavy-tailed per row, shared column pattern
    rel = np.full((4096, 1), 0.05)
    heavy = np.argsort(-sens[:, 0])[:8]
    rel[heavy] = 0.2  # the most sensitive rows also round worse
    w_hat = w * (1 + rel * rng.standard_normal(w.shape))
    full = fisher_kld(sens, w, w_hat)
    sample = sample_rows(fisher_energy(sens, w), 1, 64)
    rows = sample.rows
    estimate = fisher_kld(sens[rows], w[rows], w_hat[rows], sample.row_weights(fisher_energy(sens, w)))
    by_count = fisher_kld(sens[rows], w[rows], w_hat[rows]) * 4096 / len(rows)
    plain = np.unique(np.rint(np.linspace(0, 4095, 64)).astype(int))
    assert abs(np.log(estimate / full)) < 0.1
    assert abs(np.log(estimate / full)) < abs(np.log(by_count / full))
    ratio_only = fisher_kld(sens[plain], w[plain], w_hat[plain]) * (
        fisher_energy(sens, w).sum() / fisher_energy(sens, w)[plain].sum())
    assert abs(np.log(estimate / full)) < abs(np.log(ratio_only / full))  # the exact heavy rows matter


def test_fisher_measurement_from_sampled_rows_agrees_with_all_rows(tiny_llama_dir: Path, tmp_path: Path) -> None:
    source = open_model(tiny_llama_dir)
    spec = MeasurementSpec(type="fisher", samples=4, seq_len=32, calibrate_tensors=0, sample_rows=0)
    full = measure(source, None, CANDS, spec, tmp_path)
    rows = max(t.shape[0] for t in source.tensors if len(t.shape) == 2) // 4
    sampled = measure(source, None, CANDS, MeasurementSpec(**{**spec.__dict__, "sample_rows": rows}), tmp_path)
    folder = next(tmp_path.glob("measure-*"))  # one folder; each row setting has its own files
    assert list(folder.glob("proxy-rows0-*")) and list(folder.glob(f"proxy-rows{rows}-*"))
    assert list(folder.glob(f"fisher-*-rows{rows}-*"))
    ratios = [np.log(s.fisher / f.fisher) for a, b in zip(full.tensors, sampled.tensors) if a.shape[0] > rows
              for f, s in zip(a.options, b.options) if f.fisher > 0]
    assert ratios and float(np.sqrt(np.mean(np.square(ratios)))) < 0.3


@pytest.mark.parametrize("family", ["llama3", "gemma3"])
def test_probe_replays_the_layers_before_the_tensor(family: str, tmp_path: Path) -> None:
    """A probe runs from the swapped tensor's layer on (the earlier layers replay the reference pass):
    the KLD equals the whole model's forward with the same weight set, also where the decoder picks
    each layer's mask by the layer's attention type (Gemma 3)."""
    from families import build_family

    from aqrecipe.planner.kld import KldProbe, calibration_token_windows, hf_weight_of
    from aqrecipe.planner.proxy import round_trip

    source = open_model(build_family(family, tmp_path / family, dtype="float32"))
    probe = KldProbe(source, calibration_token_windows(source, 2, 64, 0))
    last = max(int(n.split(".")[1]) for n in (t.gguf_name for t in source.tensors) if n.startswith("blk."))
    for name in (f"blk.{last}.ffn_down.weight", f"blk.{last}.attn_v.weight", "blk.0.attn_q.weight"):
        hf_name, w = hf_weight_of(source, name)
        w_hat = round_trip(w, "Q4_0", None)
        replayed = probe.kld(hf_name, w_hat)
        original = probe.model.get_parameter(hf_name).data.clone()
        probe.set_weight(hf_name, w_hat)
        whole = probe.current_kld()
        probe.model.get_parameter(hf_name).data.copy_(original)
        assert replayed > 0 and replayed == pytest.approx(whole, rel=1e-4)
    assert probe.current_kld() == pytest.approx(0.0, abs=1e-7)  # every weight is back
