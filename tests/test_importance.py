"""Importance analysis without torch: config/schema, files, summaries, scores, detection logic, protection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aqrecipe.errors import RecipeError
from aqrecipe.importance import (NO_SUPER_WEIGHT, SCHEMA_FRAGMENT, DetectSpec, ImportanceFileError, ImportanceMatrix,
                                 ProtectSpec, SuperWeight, SuperWeightsSection, fake_quantize,
                                 load_importance, protect_plan, protection_rules, restore_super_weights,
                                 save_importance, summarize_importance)
from aqrecipe.importance.activation import DownRanges, detect_by_activation, scan, spike_ratios
from aqrecipe.importance.scores import combine_scores
from aqrecipe.imatrix import ImatrixData, ImatrixEntry
from aqrecipe.plan import Rule, RuleSet


def sw(layer=1, row=2, col=3, value=4.0, **kw) -> SuperWeight:
    return SuperWeight(layer=layer, tensor=f"blk.{layer}.ffn_down.weight",
                       hf_name=f"model.layers.{layer}.mlp.down_proj.weight", row=row, col=col, value=value, **kw)


def matrix(sws=(), arrays=None) -> ImportanceMatrix:
    tensors, layers = combine_scores({"gradient": {"blk.0.ffn_down.weight": 1.0, "blk.1.ffn_down.weight": 3.0}})
    return ImportanceMatrix(tensor_scores=tensors, layer_scores=layers, super_weights=tuple(sws),
                            computation_method="test", calibration_dataset_info={"windows": 2},
                            model_fingerprint="abc", notes=() if sws else (NO_SUPER_WEIGHT,),
                            arrays=arrays or {"down_proj.max_out.0": np.array([1.0, 2.0], np.float32),
                                              "down_proj.max_out.1": np.array([3.0, 900.0], np.float32)})


# --- recipe section ------------------------------------------------------------------
def test_section_defaults_round_trip_and_errors():
    s = SuperWeightsSection.from_dict({"detect": {"type": "activation", "spike_ratio": 80},
                                       "protect": {"type": "raise-tensor", "tensor_type": "Q6_K"}})
    assert s.detect.type == "activation" and s.detect.spike_ratio == 80 and s.detect.max_count == 8
    assert s.protect.tensor_type == "Q6_K" and s.protect.imatrix_boost == 100.0
    assert SuperWeightsSection.from_dict(s.to_dict()) == s
    # the one section mechanism (aqrecipe.recipe.sections): the schema's checks, the recipe's codes and paths
    for bad, code, path in (({"detect": {"type": "combined", "ratio": 3}}, "R101", "$.super_weights.detect.ratio"),
                            ({"detect": {"type": "magic"}}, "R112", "$.super_weights.detect.type"),
                            ({"protect": {"type": "raise-tensor", "tensor_type": "Q2_K"}}, "R112",
                             "$.super_weights.protect.tensor_type")):
        with pytest.raises(RecipeError) as exc:
            SuperWeightsSection.from_dict(bad)
        assert [(i.code, i.json_path) for i in exc.value.issues] == [(code, path)]


def test_schema_fragment_is_closed_and_accepts_the_example():
    jsonschema = pytest.importorskip("jsonschema")
    v = jsonschema.Draft202012Validator(SCHEMA_FRAGMENT)
    jsonschema.Draft202012Validator.check_schema(SCHEMA_FRAGMENT)
    ok = {"detect": {"type": "combined", "spike_ratio": 50, "max_count": 8, "samples": 8, "seq_len": 128},
          "protect": {"type": "raise-tensor", "tensor_type": "Q8_0", "imatrix_boost": 100.0}}
    assert not list(v.iter_errors(ok))
    assert list(v.iter_errors({"detect": {"type": "combined", "typo": 1}}))
    assert list(v.iter_errors({"protect": {"tensor_type": "Q8_0"}}))  # type: is required
    assert list(v.iter_errors({"detect": {"type": "combined", "spike_ratio": 1}}))
    # the schema and the dataclasses agree on the field names
    assert set(SCHEMA_FRAGMENT["properties"]["detect"]["properties"]) == set(DetectSpec.__dataclass_fields__)
    assert set(SCHEMA_FRAGMENT["properties"]["protect"]["properties"]) == set(ProtectSpec.__dataclass_fields__)


# --- file format ---------------------------------------------------------------------
def test_save_load_round_trip_is_exact_and_deterministic(tmp_path):
    obj = matrix([sw(saliency=0.5)])
    j1, a1 = save_importance(obj, tmp_path / "one.json")
    j2, a2 = save_importance(obj, tmp_path / "two")
    assert j1.read_bytes() == j2.read_bytes() and a1.read_bytes() == a2.read_bytes()
    back = load_importance(tmp_path / "one.safetensors")
    assert back.super_weights == obj.super_weights
    assert back.super_weight_indices == [("blk.1.ffn_down.weight", 2, 3)]
    assert back.layer_scores == obj.layer_scores and back.tensor_scores == obj.tensor_scores
    np.testing.assert_array_equal(back.arrays["down_proj.max_out.1"], [3.0, 900.0])
    assert json.loads(j1.read_text())["verdict"] == "1 super weight(s)"


def test_load_rejects_missing_mismatched_and_foreign_files(tmp_path):
    with pytest.raises(ImportanceFileError, match="does not exist"):
        load_importance(tmp_path / "none.json")
    j, a = save_importance(matrix(), tmp_path / "x.json")
    a.unlink()
    with pytest.raises(ImportanceFileError, match="does not hold the arrays"):
        load_importance(j)
    j.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ImportanceFileError, match="format"):
        load_importance(j)


def test_summary_states_no_clear_super_weight_plainly():
    summary, text = summarize_importance(matrix())
    assert summary["verdict"] == NO_SUPER_WEIGHT and summary["super_weights"] == []
    assert text.splitlines()[0] == f"importance: {NO_SUPER_WEIGHT}"
    summary, text = summarize_importance(matrix([sw(max_out=900.0, spike_ratio=300.0)]))
    assert summary["super_weight_indices"] == [["blk.1.ffn_down.weight", 2, 3]]
    line = next(ln for ln in text.splitlines() if "blk.1.ffn_down.weight" in ln)
    assert line.split()[2:6] == ["blk.1.ffn_down.weight", "2", "3", "4.0000"] and "x300" in line


def test_combine_scores_hand_computed():
    tensors, layers = combine_scores({"imatrix": {"blk.0.a": 1.0, "blk.0.b": 1.0, "blk.1.a": 2.0, "output": 4.0}})
    assert tensors["blk.1.a"] == {"imatrix": 2.0, "imatrix_norm": 0.25}
    assert layers == {0: {"imatrix": 2.0, "imatrix_norm": 0.25}, 1: {"imatrix": 2.0, "imatrix_norm": 0.25}}


# --- activation detection on synthetic ranges ---------------------------------------------
class FakeWeights:
    """DownWeights stand-in: layer -> matrix."""

    def __init__(self, mats):
        self.mats = mats
        self.names = {k: (f"blk.{k}.ffn_down.weight", f"model.layers.{k}.mlp.down_proj.weight") for k in mats}

    def read(self, layer):
        return self.mats[layer]


def _mats(n_layers=4, planted=()):
    rng = np.random.default_rng(0)
    mats = {k: (0.02 * rng.standard_normal((6, 8))).astype(np.float32) for k in range(n_layers)}
    for layer, r, c, v in planted:
        mats[layer][r, c] = v
    return mats


def _ranges(mats, x_spike=None):
    """max|x| = 1 except spikes; max|y| = |W| @ max|x| (an upper bound, enough for the test)."""
    mi, mo = {}, {}
    for k, w in mats.items():
        x = np.ones(w.shape[1], np.float32)
        for (layer, c, v) in x_spike or ():
            if layer == k:
                x[c] = v
        mi[k], mo[k] = x, np.abs(w) @ x
    return DownRanges(mi, mo)


def test_spike_ratio_is_peak_over_median_of_other_layers():
    r = DownRanges({0: np.ones(2), 1: np.ones(2), 2: np.ones(2)},
                   {0: np.array([1.0, 2.0]), 1: np.array([4.0, 0.0]), 2: np.array([600.0, 1.0])})
    assert spike_ratios(r) == {0: pytest.approx(2 / 302), 1: pytest.approx(4 / 301), 2: pytest.approx(600 / 3)}


def test_scan_finds_the_planted_weight_and_rejects_an_unexplained_spike():
    mats = _mats(planted=[(1, 4, 6, 2.0)])
    ranges = _ranges(mats, x_spike=[(1, 6, 500.0), (3, 2, 5000.0)])  # layer 3: big input, ordinary weights
    found, notes = scan(ranges, FakeWeights(mats), DetectSpec(spike_ratio=20))
    assert [(s.layer, s.row, s.col, s.value) for s in found] == [(1, 4, 6, 2.0)]
    assert found[0].share > 0.9 and found[0].weight_z > 6
    assert len(notes) == 1 and notes[0].startswith("layer 3:") and "no single weight" in notes[0]


def test_nothing_stands_out_means_nothing_found():
    mats = _mats()
    found, notes = scan(_ranges(mats), FakeWeights(mats), DetectSpec())
    assert found == [] and notes == []


def test_zero_and_repeat_uncovers_a_masked_second_weight_and_respects_max_count():
    planted = [(1, 4, 6, 2.0), (2, 0, 1, -1.5)]

    def measure(zeroed):
        mats = _mats(planted=planted)
        for s in zeroed:
            mats[s.layer][s.row, s.col] = 0.0
        # the second spike is masked while the first weight exists (its input spike is small)
        big2 = 300.0 if any(s.layer == 1 for s in zeroed) else 1.0
        return _ranges(mats, x_spike=[(1, 6, 500.0), (2, 1, big2)])

    weights = FakeWeights(_mats(planted=planted))
    found, notes, rounds = detect_by_activation(measure, weights, DetectSpec(spike_ratio=20))
    assert [(s.layer, s.row, s.col, s.iteration) for s in found] == [(1, 4, 6, 0), (2, 0, 1, 1)]
    assert len(rounds) == 3
    found, _, rounds = detect_by_activation(measure, weights, DetectSpec(spike_ratio=20, max_count=1))
    assert len(found) == 1 and len(rounds) == 1


# --- protection ---------------------------------------------------------------------------
def _imatrix():
    e = ImatrixEntry(in_sum2=np.arange(1, 9, dtype=np.float32)[None, :], counts=np.array([2.0], np.float32))
    return ImatrixData({"blk.1.ffn_down.weight": e, "blk.0.ffn_down.weight": e}, ["d"], 1, 8)


def test_protect_plan_raises_exact_tensor_over_globs_and_boosts_only_that_column():
    base = [Rule("blk.*.ffn_down.weight", "Q2_K", "glob", "recipe rules[0]")]
    im = _imatrix()
    rules, boosted = protect_plan(base, im, [sw(col=3), sw(col=5)], SuperWeightsSection())
    assert [(r.pattern, r.type, r.kind) for r in rules] == [("blk.1.ffn_down.weight", "Q8_0", "exact"),
                                                            ("blk.*.ffn_down.weight", "Q2_K", "glob")]
    rs = RuleSet(rules)
    assert rs.match("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight").type == "Q8_0"
    assert rs.match("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight").type == "Q2_K"
    want = np.arange(1, 9, dtype=np.float32) / 2
    want[[3, 5]] *= 100
    np.testing.assert_allclose(boosted.importance("blk.1.ffn_down.weight"), want)
    np.testing.assert_array_equal(im.importance("blk.1.ffn_down.weight"), np.arange(1, 9) / 2)  # untouched
    np.testing.assert_array_equal(boosted.importance("blk.0.ffn_down.weight"), np.arange(1, 9) / 2)


def test_protect_plan_keeps_a_stronger_user_rule_and_honours_off_switches():
    user = [Rule("blk.1.ffn_down.weight", "F16", "exact", "recipe rules[0]")]
    rules, _ = protect_plan(user, None, [sw()], SuperWeightsSection())
    assert rules == user
    rules, im = protect_plan([], _imatrix(), [sw()], ProtectSpec(type="imatrix-only"))
    assert rules == [] and im.importance("blk.1.ffn_down.weight")[3] == pytest.approx(200.0)
    im0 = _imatrix()
    assert protect_plan(user, im0, [sw()], SuperWeightsSection(enabled=False)) == (user, im0)
    assert protect_plan(user, im0, matrix(), SuperWeightsSection()) == (user, im0)  # nothing found
    assert [r.pattern for r in protection_rules([sw(), sw(col=9), sw(layer=0)], "Q8_0")] == [
        "blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]


def test_restore_super_weights_puts_exact_values_back():
    w = {"model.layers.1.mlp.down_proj.weight": np.zeros((4, 8), np.float32), "other": np.ones(3)}
    out = restore_super_weights(w, [sw(row=2, col=3, value=7.25), sw(row=0, col=0, value=-1.5)])
    assert out["model.layers.1.mlp.down_proj.weight"][2, 3] == 7.25
    assert out["model.layers.1.mlp.down_proj.weight"][0, 0] == -1.5
    assert w["model.layers.1.mlp.down_proj.weight"].sum() == 0  # input not modified
    assert out["other"] is w["other"]


def test_fake_quantize_restores_the_super_weight_exactly():
    rng = np.random.default_rng(1)
    w = (0.02 * rng.standard_normal((4, 256))).astype(np.float32)
    w[1, 77] = 3.1415
    plain = fake_quantize("blk.1.ffn_down.weight", w, "Q2_K")
    prot = fake_quantize("blk.1.ffn_down.weight", w, "Q2_K", super_weights=[sw(row=1, col=77, value=3.1415)])
    assert plain[1, 77] != np.float32(3.1415)
    assert prot[1, 77] == np.float32(3.1415)
    mask = np.ones_like(w, bool)
    mask[1, 77] = False
    np.testing.assert_array_equal(prot[mask], plain[mask])


def test_plot_writes_a_deterministic_png(tmp_path):
    pytest.importorskip("matplotlib")
    from aqrecipe.importance import plot_importance

    obj = matrix([sw(layer=1, row=1, col=0, value=4.0, max_out=900.0)])
    a = plot_importance(obj, tmp_path / "a.png")
    b = plot_importance(obj, tmp_path / "b.png")
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.read_bytes() == b.read_bytes()
    plot_importance(matrix(arrays={}), tmp_path / "c.png")  # no spike arrays: one panel
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_combined_merge_keeps_gradient_confirmed_candidates_only():
    from aqrecipe.importance.detect import merge
    from aqrecipe.importance.gradient import GradientResult

    downs = {f"blk.{i}.ffn_down.weight": 1.0 for i in range(5)}  # median of the maxima: 1.0
    downs["blk.1.ffn_down.weight"] = 30.0
    strong, weak = sw(layer=1, spike_ratio=500.0), sw(layer=3, row=0, col=0, spike_ratio=300.0)
    grad = GradientResult(loss=1.0, tensor_sum={}, tensor_max=downs, tensor_argmax={},
                          lookups={strong.index: 30.0, weak.index: 1.1})
    kept, notes = merge([weak, strong], grad, [], DetectSpec())
    assert [k.index for k in kept] == [strong.index] and kept[0].saliency_ratio == pytest.approx(30.0)
    assert len(notes) == 1 and notes[0].startswith("blk.3.ffn_down.weight[0,0]") and "1.10x" in notes[0]
    kept, _ = merge([weak, strong], grad, [], DetectSpec(confirm_ratio=1.0))
    assert [k.index for k in kept] == [strong.index, weak.index]  # ranked by saliency
    # found by the gradient detector too: kept whatever its ratio, marked combined
    kept, notes = merge([weak], grad, [replace_sw(weak, found_by="gradient")], DetectSpec())
    assert [(k.index, k.found_by) for k in kept] == [(weak.index, "combined")] and notes == []
    kept, _ = merge([strong], None, [], DetectSpec(max_count=0))
    assert kept == []


def replace_sw(s: SuperWeight, **kw) -> SuperWeight:
    from dataclasses import replace

    return replace(s, **kw)
