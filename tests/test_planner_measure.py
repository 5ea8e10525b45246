"""Measurement (proxy + KLD, resumable), calibration fit, plan_dynamic and the report on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.models import open_model
from aqrecipe.plan import compile_plan
from aqrecipe.planner import (MeasurementSpec, PlannerSpec, SCHEMA_FRAGMENT, as_plan_spec, measure, plan_dynamic,
                              spearman)
from aqrecipe.models.tensor_names import role_of
from aqrecipe.planner.measurement import Measurement, candidate_types
from aqrecipe.planner.proxy import proxy_error

CANDS = ("Q2_K", "Q4_K", "Q8_0", "Q4_0")
SPEC = MeasurementSpec(samples=2, seq_len=16, calibrate_tensors=4)


def test_proxy_hand_computed() -> None:
    w = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    w_hat = np.array([[1.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    # column errors: c0 = 0 + 1 = 1, c1 = 1 + 0 = 1; energy c0 = 10, c1 = 20
    assert proxy_error(w, w_hat, None) == pytest.approx(2 / 30)
    assert proxy_error(w, w_hat, np.array([3.0, 1.0])) == pytest.approx((3 + 1) / (30 + 20))
    assert proxy_error(w, w, None) == 0.0


def test_spearman_hand_computed() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)  # tie: ranks 0.5 0.5 2


def test_candidates_fall_back_and_dedupe() -> None:
    # llama.cpp's fallbacks for 576-wide rows: Q2_K, Q3_K -> Q4_0; IQ1_S -> IQ4_NL; Q4_K -> Q5_0; Q6_K -> Q8_0
    assert candidate_types(("Q2_K", "Q3_K", "IQ1_S", "Q4_K", "Q6_K", "Q8_0"), 576) == ["IQ4_NL", "Q4_0", "Q5_0",
                                                                                          "Q8_0"]
    assert candidate_types(("Q2_K", "Q4_K"), 1536) == ["Q2_K", "Q4_K"]
    assert role_of("token_embd.weight", tied_output=True) == "output"
    assert role_of("blk.3.ffn_down.weight") == "ffn_down"


def test_measure_sizes_resume_and_reuse(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = open_model(tiny_llama_dir)
    m = measure(source, None, CANDS, SPEC, tmp_path)
    # bytes agree with the plan compiler for every option
    for t in m.tensors:
        for o in t.options:
            plan = compile_plan(source, as_plan_spec({t.gguf_name: o.type}), model_ref="x")
            assert plan.entry(t.gguf_name).n_bytes == o.n_bytes
        by = {o.type: o for o in t.options}
        assert by["Q8_0"].proxy < by["Q4_0"].proxy  # more bits, less error
    measured = [o for t in m.tensors for o in t.options if o.kld is not None]
    assert 4 <= len(measured) <= 20 and all(o.kld >= -1e-6 for o in measured)
    assert m.calibration.n_pairs == len([o for o in measured if o.proxy > 0])
    folder = next(tmp_path.glob("measure-*"))
    # a new budget reuses the file: nothing is recomputed
    import sys
    mod = sys.modules["aqrecipe.planner.measure"]
    monkeypatch.setattr(mod, "round_trip", lambda *a, **k: pytest.fail("recomputed"))
    assert measure(source, None, CANDS, SPEC, tmp_path) == m
    monkeypatch.undo()
    # a killed run: the final file and one stage are gone; the rest is reused, result identical
    next(folder.glob("measurement-*.json")).unlink()
    (folder / "proxy-rows512-0001.json").unlink()
    before = (folder / "proxy-rows512-0000.json").stat().st_mtime_ns
    again = measure(source, None, CANDS, SPEC, tmp_path)
    assert again == m
    assert (folder / "proxy-rows512-0000.json").stat().st_mtime_ns == before
    assert Measurement.load(next(folder.glob("measurement-*.json"))) == m


@pytest.mark.slow
def test_plan_dynamic_rules_report(tiny_llama_dir: Path, tmp_path: Path) -> None:
    source = open_model(tiny_llama_dir)
    section = {"type": "budget", "target_bpw": 6.0, "candidates": list(CANDS),
               "measurement": {"type": "proxy", "samples": 2, "seq_len": 16, "calibrate_tensors": 4}}
    rules, report = plan_dynamic(source, section, None, tmp_path)
    plan = compile_plan(source, as_plan_spec({r.pattern: r.type for r in rules}), model_ref="x")
    assert plan.total_bytes == report.total_bytes <= int(6.0 * plan.n_params / 8)
    assert {r.kind for r in rules} == {"exact"}
    paths = report.save(tmp_path / "report")
    assert [p.suffix for p in paths] == [".md", ".json", ".png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(paths[1].read_text())
    assert data["totals"]["bytes"] == plan.total_bytes
    assert sum(r["share"] for r in data["tensors"]) == pytest.approx(1 - sum(
        e.n_bytes for e in plan.entries if e.type == "F32") / plan.total_bytes)
    assert "| blk.0.attn_q.weight | 0 |" in paths[0].read_text()
    rules2, _ = plan_dynamic(source, section, None, tmp_path)
    assert rules2 == rules  # deterministic, and the measurement was reused


def test_tied_embeddings_get_output_role(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    m = measure(open_model(tiny_qwen2_dir), None, ("Q4_0", "Q8_0"), MeasurementSpec(samples=2, seq_len=16,
                calibrate_tensors=1), tmp_path)
    t = m.tensor("token_embd.weight")
    assert t.role == "output" and m.settings["tied_output"] is True


def test_spec_round_trip_and_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    d = {"type": "budget", "target_bpw": 3.5, "max_kld": 0.1, "candidates": ["Q4_K", "Q8_0"],
         "measurement": {"type": "kld", "samples": 16, "seq_len": 128, "calibrate_tensors": 0, "seed": 0,
                         "sample_rows": 256}}
    spec = PlannerSpec.from_dict(d)
    assert spec.to_dict() == {**d, "target_bytes": None, "validate": True}
    jsonschema.Draft202012Validator.check_schema(SCHEMA_FRAGMENT)
    v = jsonschema.Draft202012Validator(SCHEMA_FRAGMENT)
    assert not list(v.iter_errors(d))
    assert list(v.iter_errors({"type": "budget"}))  # needs a target
    assert list(v.iter_errors({"type": "budget", "target_bpw": 3, "target_bytes": 5}))
    assert list(v.iter_errors({"type": "budget", "target_bpw": 3, "colour": 1}))




def test_probed_tensors_default_by_measurement_type() -> None:
    """fisher needs no probes to rank the options (measured: better plans without them); proxy
    needs them to be scaled to KLD at all; an explicit count wins for either."""
    assert MeasurementSpec().probed_tensors == 0
    assert MeasurementSpec(type="proxy").probed_tensors == 8
    assert MeasurementSpec(type="fisher", calibrate_tensors=3).probed_tensors == 3
    assert MeasurementSpec(type="proxy", calibrate_tensors=0).probed_tensors == 0
