"""The planner's guard (issue 17): the plan is measured against the recipe's own types on held-out
windows, and a plan that measures worse is replaced by them, with a warning and a report line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.models import open_model
from aqrecipe.plan import PlanSpec, compile_plan, is_quantizable
from aqrecipe.planner import MeasurementSpec, plan_dynamic
from aqrecipe.planner.dynamic import with_baseline_types
from aqrecipe.planner.kld import calibration_token_windows
from aqrecipe.planner.measurement import Measurement
from aqrecipe.planner.validate import held_out_windows, validate_plan

pytest.importorskip("torch")

SPEC = MeasurementSpec(samples=4, seq_len=32, calibrate_tensors=4)


def _mixture_types(source, mixture: str) -> tuple[dict[str, str], int]:
    plan = compile_plan(source, PlanSpec(mixture=mixture), model_ref="x")
    return {e.gguf_name: e.type for e in plan.entries if is_quantizable(e.gguf_name, e.shape)}, plan.total_bytes


def test_held_out_windows_are_not_the_measurement_windows(tiny_llama_dir: Path) -> None:
    source = open_model(tiny_llama_dir)
    used = calibration_token_windows(source, SPEC.samples, SPEC.seq_len, SPEC.seed)
    held = held_out_windows(source, SPEC)
    assert held.shape == used.shape
    assert not {w.tobytes() for w in held} & {w.tobytes() for w in used}
    assert np.array_equal(held, held_out_windows(source, SPEC))  # deterministic


def test_validation_measures_both_types_on_the_same_windows(tiny_llama_dir: Path) -> None:
    source = open_model(tiny_llama_dir)
    names = [t.gguf_name for t in source.tensors if is_quantizable(t.gguf_name, t.shape)]
    low, high = dict.fromkeys(names, "Q4_0"), dict.fromkeys(names, "Q8_0")
    v = validate_plan(source, None, low, high, "all Q8_0", SPEC)
    assert v.plan_kld > v.baseline_kld > 0 and v.shipped == "baseline" and v.plan_is_worse
    assert v.swapped_tensors == len(names) and v.float_tensors == 0
    assert (v.windows, v.seq_len) == (SPEC.samples, SPEC.seq_len)
    w = validate_plan(source, None, high, low, "all Q4_0", SPEC)
    assert w.shipped == "plan"
    assert w.plan_kld == pytest.approx(v.baseline_kld, rel=1e-6) and w.baseline_kld == pytest.approx(v.plan_kld, rel=1e-6)


def test_baseline_types_join_the_candidates() -> None:
    assert with_baseline_types(("Q2_K", "Q4_K"), {"a": "Q6_K", "b": "Q4_K", "c": "Q5_0"}) == ("Q2_K", "Q4_K", "Q5_0", "Q6_K")
    assert with_baseline_types(("Q2_K",), None) == ("Q2_K",)


def test_a_misranking_plan_is_replaced_by_the_mixture(tiny_llama_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A planted misranking (predictions that grow with the bits) makes the solver choose the smallest
    types; the measured validation catches it and the mixture's types are used instead."""
    source = open_model(tiny_llama_dir)
    baseline, size = _mixture_types(source, "Q4_K_M")
    section = {"type": "budget", "target_bytes": size, "candidates": ["Q4_0", "Q8_0"],
               "measurement": {"type": "proxy", "samples": SPEC.samples, "seq_len": SPEC.seq_len,
                               "calibrate_tensors": 0}}
    monkeypatch.setattr(Measurement, "predicted", lambda self, t, o: float(o.n_bytes))  # more bits, "more error"
    with caplog.at_level(logging.WARNING, logger="aqrecipe.planner.dynamic"):
        rules, report = plan_dynamic(source, section, None, tmp_path, baseline=baseline,
                                     baseline_label="the Q4_K_M mixture")
    assert {r.pattern: r.type for r in rules} == baseline
    v = report.validation
    assert v["shipped"] == "baseline" and v["plan_kld"] > v["baseline_kld"] > 0
    assert "worse than the Q4_K_M mixture" in caplog.text
    assert "shipped: the Q4_K_M mixture" in report.to_markdown()
    assert json.loads(report.to_json())["validation"]["ratio"] > 1
    assert report.total_bytes == size


def test_validation_can_be_turned_off_and_skips_a_baseline_over_budget(tiny_llama_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    source = open_model(tiny_llama_dir)
    baseline, size = _mixture_types(source, "Q8_0")
    monkeypatch.setattr(Measurement, "predicted", lambda self, t, o: float(o.n_bytes))
    section = {"type": "budget", "target_bytes": size, "candidates": ["Q4_0", "Q8_0"],
               "measurement": {"type": "proxy", "samples": SPEC.samples, "seq_len": SPEC.seq_len,
                               "calibrate_tensors": 0}}
    _, report = plan_dynamic(source, {**section, "validate": False}, None, tmp_path, baseline=baseline)
    assert report.validation is None and report.total_bytes < size  # the planted misranking ships unchecked
    _, report = plan_dynamic(source, {**section, "target_bytes": size - 1}, None, tmp_path, baseline=baseline)
    assert report.validation is None  # Q8_0 does not fit in size - 1 bytes: no fallback to compare with
