"""Fuzzing the recipe and plan readers (issue 16): hostile YAML and JSON, bounded time and memory.

Each example mutates a real recipe (the shipped ones, the bad-recipe corpus) with what an
attacker would write: alias bombs, merge keys, NaN and infinities, huge numbers and strings,
deep nesting, regex rules that are exponential for a backtracking engine, control characters.
The reader must return a Recipe or raise RecipeError whose issues format and serialise, within
an allocation limit and a hang guard (not a timing assertion: a guard that turns a hang into a
failure). Plans get the same for ``load_plan``. Quick and deterministic by default;
``AQRECIPE_FUZZ=1`` runs ``AQRECIPE_FUZZ_EXAMPLES`` (default 3000) random examples per test, as
tests/test_fuzz_readers.py.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aqrecipe.errors import AqrecipeError, RecipeError
from aqrecipe.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
SEEDS = sorted((ROOT / "recipes").glob("*.yaml")) + sorted((ROOT / "tests" / "recipes_bad").glob("*.yaml"))

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_FUZZING = os.environ.get("AQRECIPE_FUZZ") == "1" or os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
FUZZ = settings(max_examples=int(os.environ.get("AQRECIPE_FUZZ_EXAMPLES", "3000")), derandomize=False, **_COMMON) \
    if _FUZZING else settings(max_examples=60, derandomize=True, **_COMMON)

_ALLOC_LIMIT = 64 << 20  # the inputs are a few KB; an expanded alias bomb would need gigabytes
_HANG_GUARD_S = 120

_BOMB = ("b0: &b0 [1, 2, 3, 4, 5, 6, 7, 8]\n"
         + "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 8)}]\n" for i in range(1, 9)))
_SNIPPETS = [
    _BOMB, _BOMB + "smoothquant: {alpha: *b8}\n", "x: &m {<<: [{a: 1}, {b: 2}]}\ny: {<<: *m}\n",
    "planner: {type: budget, target_bpw: .nan, max_kld: .inf}\n", "coherence: {min_top1: -.inf}\n",
    "smoothquant: {alpha: 1.0e+400, alpha_grid: [.nan, 0.5]}\n", "evaluation: {chunks: 99999999999999999999999}\n",
    "quantization: {mixture: Q4_K_M, rules: [{match: 're:^([a-z_.0-9]+)+!$', type: Q8_0}]}\n",
    "quantization: {default: Q4_K, rules: [{match: 're:(a)\\1', type: Q8_0}, {match: 're:(?=x)', type: Q8_0}]}\n",
    "name: \"\\e[2J\\e]52;c;ZXZpbA==\\a\\u202e\"\n", "description: '" + "d" * 20000 + "'\n",
    "a: " + "[" * 200 + "]" * 200 + "\n", "a: " + "{b: " * 100 + "1" + "}" * 100 + "\n",
    "model: &m [*m]\n", "? [a, b]\n: 1\n", "name: !!python/object:os.system {}\n", "version: !!int 99999\n",
    "super_weights: {detect: {type: combined, spike_ratio: .nan}, protect: {type: raise-tensor, imatrix_boost: 1e308}}\n",
]


class _Hung(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hung("the reader did not finish (see _HANG_GUARD_S)")


def _bounded(read, *args) -> None:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(_HANG_GUARD_S)
    tracemalloc.start()
    try:
        read(*args)
    except AqrecipeError as exc:
        assert exc.hint or isinstance(exc, RecipeError), exc
        if isinstance(exc, RecipeError):
            assert exc.issues
            for issue in exc.issues:
                assert len(issue.format()) < 2000, issue.format()[:300]
                json.dumps(issue.to_dict(), allow_nan=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < _ALLOC_LIMIT, f"reading allocated {peak} bytes"


@st.composite
def _mutated_recipe(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(SEEDS)).read_bytes()
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["snippet", "splice", "flip", "cut", "line"]))
        if kind == "snippet":
            text += draw(st.sampled_from(_SNIPPETS)).encode()
        elif kind == "splice" and text:
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(["*b8", "&a ", "<<: ", ".nan", "1e999", "re:(x+)+$", "\t", "{",
                                                     "\x1b", "'"])).encode() + text[at:]
        elif kind == "flip" and text:
            at = draw(st.integers(0, len(text) - 1))
            text = text[:at] + bytes([text[at] ^ (1 << draw(st.integers(0, 7)))]) + text[at + 1:]
        elif kind == "cut" and text:
            text = text[:draw(st.integers(0, len(text)))]
        else:
            lines = text.split(b"\n")
            i = draw(st.integers(0, max(0, len(lines) - 1)))
            text = b"\n".join(lines[:i] + [draw(st.sampled_from(_SNIPPETS)).encode().rstrip(b"\n")] + lines[i:])
    return text


@FUZZ
@given(_mutated_recipe())
def test_recipe_reader_survives_hostile_yaml(raw: bytes) -> None:
    _bounded(parse_recipe, raw)


def _plan_json(tmp: Path) -> dict:
    from test_plan import FakeSource

    from aqrecipe.plan import PlanSpec, Rule, compile_plan

    spec = PlanSpec(mixture="Q4_K_M", rules=(Rule("blk.*.attn_v.weight", "Q8_0", "glob", "rules[0]"),))
    return compile_plan(FakeSource(n_layers=2), spec, model_ref="fake").to_dict()


_JUNK = [None, True, -1, 0, 2**64, 1e308, float("nan"), "", "x" * 10000, [], {}, [[[[[]]]]], {"a": {"b": {}}}]


@pytest.fixture(scope="module")
def plan_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _plan_json(tmp_path_factory.mktemp("plan"))


@FUZZ
@given(st.data())
def test_plan_reader_survives_hostile_json(plan_data: dict, tmp_path_factory: pytest.TempPathFactory,
                                           data: st.DataObject) -> None:
    from aqrecipe.plan import load_plan

    doc = json.loads(json.dumps(plan_data))
    for _ in range(data.draw(st.integers(1, 4))):
        target = doc
        keys = data.draw(st.lists(st.sampled_from(["entries", 0, 1, "shape", "type", "gguf_name", "n_bytes",
                                                   "options", "totals", "version", "unused_rules"]), max_size=3))
        for key in keys[:-1]:
            try:
                target = target[key]
            except (KeyError, IndexError, TypeError):
                break
        if keys and isinstance(target, (dict, list)):
            value = copy.deepcopy(data.draw(st.sampled_from(_JUNK)))  # never the same object twice
            try:
                target[keys[-1]] = value
            except (IndexError, TypeError):
                pass
    text = json.dumps(doc)
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut] + data.draw(st.sampled_from(["", "[" * 100000, "{", "\x00", "NaN"])) + text[cut:]
    path = tmp_path_factory.mktemp("p") / "plan.json"
    path.write_text(text)
    _bounded(load_plan, path)
