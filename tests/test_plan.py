"""Plan compiler: rules precedence, llama.cpp mixtures, fallbacks, sizes, serialisation.

Uses a header-only fake model source shaped like SmolLM2-135M (30 layers, hidden 576,
ffn 1536, 9 heads / 3 KV heads, tied embeddings), so the expected types can be worked
out by hand from llama.cpp's rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from aqrecipe.errors import PlanError, UnknownTypeError
from aqrecipe.plan import Plan, PlanSpec, Rule, compile_plan, load_plan, parse_set_option, rule_kind
from aqrecipe.plan.mixtures import use_more_bits


@dataclass(frozen=True)
class FakeTensor:
    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    dtype: str = "F16"


@dataclass(frozen=True)
class FakeArch:
    n_layers: int = 30
    n_head: int = 9
    n_head_kv: int = 3
    gguf_arch_name: str = "llama"
    n_expert: int = 0


class FakeSource:
    def __init__(self, n_layers: int = 30, hidden: int = 576, ffn: int = 1536, tied: bool = True) -> None:
        self.path = Path("/fake/model")
        self.arch = FakeArch(n_layers=n_layers)
        kv = hidden // 9 * 3
        ts = [FakeTensor("model.embed_tokens.weight", "token_embd.weight", (49152, hidden))]
        for i in range(n_layers):
            hp, gp = f"model.layers.{i}.", f"blk.{i}."
            ts += [
                FakeTensor(hp + "input_layernorm.weight", gp + "attn_norm.weight", (hidden,)),
                FakeTensor(hp + "self_attn.q_proj.weight", gp + "attn_q.weight", (hidden, hidden)),
                FakeTensor(hp + "self_attn.k_proj.weight", gp + "attn_k.weight", (kv, hidden)),
                FakeTensor(hp + "self_attn.v_proj.weight", gp + "attn_v.weight", (kv, hidden)),
                FakeTensor(hp + "self_attn.o_proj.weight", gp + "attn_output.weight", (hidden, hidden)),
                FakeTensor(hp + "post_attention_layernorm.weight", gp + "ffn_norm.weight", (hidden,)),
                FakeTensor(hp + "mlp.gate_proj.weight", gp + "ffn_gate.weight", (ffn, hidden)),
                FakeTensor(hp + "mlp.up_proj.weight", gp + "ffn_up.weight", (ffn, hidden)),
                FakeTensor(hp + "mlp.down_proj.weight", gp + "ffn_down.weight", (hidden, ffn)),
            ]
        ts.append(FakeTensor("model.norm.weight", "output_norm.weight", (hidden,)))
        if not tied:
            ts.append(FakeTensor("lm_head.weight", "output.weight", (49152, hidden)))
        self.tensors = tuple(ts)

    def fingerprint(self) -> str:
        return "fake-fingerprint"


def _plan(spec: PlanSpec, **kw) -> Plan:
    return compile_plan(FakeSource(**kw), spec, model_ref="fake")


def _types(plan: Plan) -> dict[str, str]:
    return {e.gguf_name: e.type for e in plan.entries}


def test_use_more_bits_matches_llama_cpp_for_30_layers() -> None:
    more = [i for i in range(30) if use_more_bits(i, 30)]
    # first eighth (0..2), last eighth (26..29), every third in between starting at 3+2
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_q4_k_m_on_a_576_wide_model() -> None:
    types = _types(_plan(PlanSpec(mixture="Q4_K_M")))
    # 576 is not a multiple of 256: K-quants fall back (Q4_K -> Q5_0, Q6_K -> Q8_0)
    assert types["blk.3.attn_q.weight"] == "Q5_0"
    assert types["blk.0.attn_v.weight"] == "Q8_0"  # Q6_K bump in a more-bits layer, then fallback
    assert types["blk.3.attn_v.weight"] == "Q5_0"
    # ffn_down rows are 1536 = 6 blocks: real K-quants
    assert types["blk.0.ffn_down.weight"] == "Q6_K"
    assert types["blk.5.ffn_down.weight"] == "Q6_K"
    assert types["blk.4.ffn_down.weight"] == "Q4_K"
    # tied embeddings act as the output tensor: rows do not fit 256 -> Q8_0
    assert types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_untied_output_gets_q6_k_when_rows_fit() -> None:
    types = _types(_plan(PlanSpec(mixture="Q4_K_M"), hidden=512, tied=False))
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"


def test_q4_0_output_bumped_to_q6_k_then_falls_back() -> None:
    types = _types(_plan(PlanSpec(mixture="Q4_0")))
    assert types["token_embd.weight"] == "Q8_0"
    assert types["blk.7.ffn_down.weight"] == "Q4_0"


def test_q8_0_keeps_everything_q8_0() -> None:
    plan = _plan(PlanSpec(mixture="Q8_0"))
    assert {e.type for e in plan.entries if e.quantized} == {"Q8_0"}
    assert plan.file_type == 7


def test_rule_precedence_exact_then_regex_then_glob() -> None:
    rules = (
        Rule("blk.*.ffn_down.weight", "Q5_K", "glob", "rules[0]"),
        Rule("re:^blk\\.1\\.ffn_down", "Q3_K", "regex", "rules[1]"),
        Rule("blk.2.ffn_down.weight", "Q2_K", "exact", "rules[2]"),
    )
    types = _types(_plan(PlanSpec(mixture="Q4_K_M", rules=rules)))
    assert types["blk.2.ffn_down.weight"] == "Q2_K"  # exact wins although listed last
    assert types["blk.1.ffn_down.weight"] == "Q3_K"  # regex beats glob
    assert types["blk.0.ffn_down.weight"] == "Q5_K"  # glob beats the mixture bump


def test_rules_match_hf_names_too() -> None:
    rules = (Rule("model.layers.*.mlp.down_proj.weight", "Q8_0", "glob", "rules[0]"),)
    plan = _plan(PlanSpec(default="Q4_0", rules=rules))
    assert plan.entry("blk.4.ffn_down.weight").type == "Q8_0"
    assert plan.entry("blk.4.ffn_down.weight").chosen_by.startswith("rules[0]")


def test_unused_rules_are_reported() -> None:
    rules = (Rule("blk.99.attn_v.weight", "Q8_0", "exact", "rules[0]"),)
    plan = _plan(PlanSpec(mixture="Q8_0", rules=rules))
    assert plan.unused_rules == ("rules[0] 'blk.99.attn_v.weight' -> Q8_0",)


def test_fallback_is_recorded_in_the_plan() -> None:
    plan = _plan(PlanSpec(default="Q4_K"))
    entry = plan.entry("blk.0.attn_q.weight")
    assert (entry.requested_type, entry.type, entry.fallback) == ("Q4_K", "Q5_0", True)
    assert "fallback Q5_0" in entry.chosen_by
    assert not plan.entry("blk.0.ffn_down.weight").fallback


def test_sizes_and_totals() -> None:
    plan = _plan(PlanSpec(mixture="Q8_0"))
    q = plan.entry("blk.0.attn_q.weight")
    assert q.n_bytes == 576 * (576 // 32) * 34
    norm = plan.entry("blk.0.attn_norm.weight")
    assert norm.n_bytes == 576 * 4
    assert plan.total_bytes == sum(e.n_bytes for e in plan.entries)
    assert 8.4 < plan.bits_per_weight < 8.6
    assert plan.compression_ratio == pytest.approx(16 / plan.bits_per_weight)


def test_ultra_low_types_are_flagged_as_needing_an_imatrix() -> None:
    plan = _plan(PlanSpec(default="IQ1_S"))
    assert "blk.0.ffn_down.weight" in plan.needs_imatrix
    assert plan.entry("blk.0.attn_q.weight").type == "IQ4_NL"  # fallback
    assert "blk.0.attn_q.weight" not in plan.needs_imatrix


def test_plan_json_round_trip_and_stable_hash(tmp_path: Path) -> None:
    plan = _plan(PlanSpec(mixture="Q4_K_M"))
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    again = load_plan(path)
    assert again == plan
    assert again.sha256() == plan.sha256() == _plan(PlanSpec(mixture="Q4_K_M")).sha256()


def test_bad_plan_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"format_version": 99}')
    with pytest.raises(PlanError, match="format version"):
        load_plan(tmp_path / "old.json")


def test_unknown_types_fail_loudly() -> None:
    with pytest.raises(UnknownTypeError, match="Q9_9"):
        _plan(PlanSpec(default="Q9_9"))
    with pytest.raises(PlanError, match="unknown mixture"):
        _plan(PlanSpec(mixture="Q4_K_X"))


def test_set_option_parsing() -> None:
    rule = parse_set_option("blk.*.ffn_down.weight=q6_k")
    assert (rule.pattern, rule.type, rule.kind, rule.origin) == ("blk.*.ffn_down.weight", "Q6_K", "glob", "--set")
    assert rule_kind("re:^output") == "regex" and rule_kind("output.weight") == "exact"
    with pytest.raises(PlanError, match="PATTERN=TYPE"):
        parse_set_option("Q4_K")


@pytest.mark.parametrize(("mixture", "expected"), [("Q3_K_M", "Q4_K"), ("Q4_K_M", "Q6_K"), ("Q5_K_M", "Q6_K"),
                                                   ("Q4_K_S", "Q4_K"), ("Q2_K", "Q3_K")])
def test_fused_qkv_is_bumped_as_llama_cpp_does(mixture: str, expected: str) -> None:
    """llama.cpp's llama-quant.cpp counts attn_qkv as attn_v (category_is_attn_v): the 32nd of 32 is a
    more-bits layer, past the first two and the first four; GQA 1 (tests/test_families.py compares the
    whole Phi-3 file with llama-quantize's)."""
    from aqrecipe.plan.mixtures import TensorContext, get_mixture, mixture_type

    m = get_mixture(mixture)
    ctx = TensorContext("blk.31.attn_qkv.weight", 3072, 31, 32, 1, True)
    base = {"Q3_K_M": "Q3_K", "Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q4_K_S": "Q4_K", "Q2_K": "Q2_K"}[mixture]
    assert mixture_type(m, base, ctx)[0] == expected
