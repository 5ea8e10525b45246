"""Stage sections: validated once by the recipe schema (with positions), built once into typed frozen dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from aqrecipe.errors import RecipeError
from aqrecipe.recipe import parse_recipe, recipe_from_dict
from aqrecipe.recipe.model import STAGE_SECTIONS
from aqrecipe.recipe.sections import (SECTIONS, CalibrationSection, CoherenceSpec, ImatrixCompute, ImatrixFile,
                                      PlannerSpec, SmoothQuantConfig, SuperWeightsSection, parse_section)

HEAD = "version: 1\nmodel: demo\nquantization: {default: Q8_0}\n"


def test_every_stage_section_has_one_typed_home():
    assert set(SECTIONS) == set(STAGE_SECTIONS)
    # the technique packages re-export the same classes, they do not define their own
    from aqrecipe.evaluate.coherence import CoherenceSpec as C
    from aqrecipe.importance import SuperWeightsSection as S
    from aqrecipe.planner import PlannerSpec as P
    from aqrecipe.smoothquant import SmoothQuantConfig as Q

    assert (C, S, P, Q) == (CoherenceSpec, SuperWeightsSection, PlannerSpec, SmoothQuantConfig)


def test_recipe_sections_are_typed_frozen_and_defaulted():
    r = parse_recipe(HEAD + """imatrix:
  type: compute
  calibration: {source: {type: jsonl, path: c.jsonl}, samples: 256.0}
smoothquant:
  alpha: auto
  mappings: {type: auto, overrides: [{norm: blk.0.attn_norm, alpha: 1}]}
  output: {type: gguf-q8_0, path: o.gguf}
planner: {type: budget, target_bpw: 3, candidates: [Q4_K, Q8_0]}
super_weights: {detect: {type: activation}}
coherence: {strict: true}
""")
    im = r.section("imatrix")
    assert isinstance(im, ImatrixCompute) and im.save is None
    assert im.calibration.samples == 256 and type(im.calibration.samples) is int
    assert im.calibration.source.type == "jsonl" and im.calibration.source.field == "text"
    sq = r.section("smoothquant")
    assert sq.is_auto and sq.mappings == "auto" and sq.output == "gguf-q8_0" and sq.output_path == "o.gguf"
    assert sq.groups[0].alpha == 1.0 and sq.groups[0].linears == ()
    assert sq == SmoothQuantConfig.from_dict(r.stage("smoothquant"))
    pl = r.section("planner")
    assert pl.target_bpw == 3.0 and pl.candidates == ("Q4_K", "Q8_0") and pl.measurement.type == "fisher"
    assert pl.measurement.calibrate_tensors is None and pl.measurement.probed_tensors == 0 and pl.validate
    sw = r.section("super_weights")
    assert sw.detect.type == "activation" and sw.detect.spike_ratio == 50.0 and sw.protect.type == "raise-tensor"
    assert r.section("coherence") == CoherenceSpec(strict=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sw.enabled = False  # type: ignore[misc]
    # a recipe read back from its own data has the same sections
    assert recipe_from_dict(r.to_dict()).sections == r.sections


def test_tagged_union_and_absent_sections():
    r = parse_recipe(HEAD + "imatrix: {type: file, path: x.gguf}\n")
    assert r.section("imatrix") == ImatrixFile(path="x.gguf")
    assert r.section("planner") is None and r.section("coherence") is None
    assert parse_section("imatrix", {"type": "compute"}) == ImatrixCompute(calibration=CalibrationSection())
    with pytest.raises(KeyError):
        r.section("quantization")


def test_section_errors_come_from_the_schema_with_positions():
    with pytest.raises(RecipeError) as exc:
        parse_recipe(HEAD + "smoothquant:\n  alpha: 2\nplanner: {type: budget, target_bpw: 3, colour: 1}\n")
    got = [(i.code, i.json_path, i.line) for i in exc.value.issues]
    assert ("R112", "$.smoothquant.alpha", 5) in got and ("R101", "$.planner.colour", 6) in got
    with pytest.raises(RecipeError) as exc:
        PlannerSpec.from_dict({"type": "budget"})  # one section alone: same schema, same codes
    assert exc.value.issues and exc.value.issues[0].json_path.startswith("$.planner")
