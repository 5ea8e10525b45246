"""Coherence validation: loop detection, when it runs, and the verdict on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from aqrecipe.evaluate.coherence import CoherenceSpec, is_ultra_low, repetition_loop
from aqrecipe.plan import PlanSpec, compile_plan
from test_plan import FakeSource


@pytest.mark.parametrize(
    ("tokens", "loops"),
    [
        ([5, 6, 7, 8, 9, 10, 11, 12], False),
        ([1, 2, 3] + [7] * 6, True),  # period 1
        ([1, 2] + [4, 5, 6] * 3, True),  # period 3, three times
        ([4, 5, 6] * 2, False),  # only twice
        (list(range(10)) + [1, 2, 1, 3, 1, 2, 1, 3] * 3, True),
        ([1, 2, 1, 2, 3, 4, 3, 4, 5, 6, 5, 6, 7, 8, 7, 8, 9], False),
        ([3, 3, 4, 4] * 4 + [5], True),  # 17 tokens, 3 distinct: degenerate
    ],
)
def test_repetition_loop(tokens: list[int], loops: bool) -> None:
    assert repetition_loop(tokens) is loops


def test_runs_by_default_only_for_ultra_low_bit_plans() -> None:
    assert is_ultra_low(compile_plan(FakeSource(), PlanSpec(mixture="IQ1_S"), model_ref="f"))
    assert is_ultra_low(compile_plan(FakeSource(), PlanSpec(mixture="Q2_K"), model_ref="f"))
    assert not is_ultra_low(compile_plan(FakeSource(), PlanSpec(mixture="Q4_K_M"), model_ref="f"))


def test_spec_from_recipe_section() -> None:
    spec = CoherenceSpec.from_dict({"strict": True, "max_ppl_ratio": 1.5})
    assert spec.strict and spec.max_ppl_ratio == 1.5 and spec.enabled is None


@pytest.mark.slow
@pytest.mark.llamacpp
def test_verdicts_on_the_demo(demo_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from aqrecipe.cli.commands import main
    from aqrecipe.evaluate.coherence import check_coherence
    from aqrecipe.evaluate.reference import reference_gguf

    ref = reference_gguf(demo_model_dir)
    good, bad = tmp_path / "q8.gguf", tmp_path / "collapsed.gguf"
    assert main(["quantize", str(demo_model_dir), "--type", "Q8_0", "-o", str(good), "-q"]) == 0
    # every matrix at the coarsest ternary code with the format's absmax scale: collapses
    recipe = tmp_path / "collapse.yaml"
    recipe.write_text(
        f"version: 1\nmodel: {demo_model_dir}\nquantization:\n  default: TQ1_0\n  rules:\n"
        "    - match: '*.ffn_down.weight'\n      type: TQ1_0\nevaluation:\n  enabled: false\n"
        "coherence:\n  enabled: false\n"
    )
    assert main(["apply", str(recipe), "-o", str(bad), "-q"]) == 0
    spec = CoherenceSpec(chunks=2)
    ok = check_coherence(good, ref, spec)
    assert ok.passed, ok.failures
    collapsed = check_coherence(bad, ref, spec)
    assert not collapsed.passed
    assert collapsed.ppl_ratio > spec.max_ppl_ratio or collapsed.top1_agreement < spec.min_top1
