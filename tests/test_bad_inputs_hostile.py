"""Bad-input corpus, part C (issue 16): numbers on the command line, rule patterns, llama.cpp's refusals.

Each case runs the real CLI in-process on one kind of hostile input and checks: exit code 2,
the error class (or an argparse usage error), the message's key words, no traceback, and
that nothing was written. The recipe-level members of the same classes (alias bombs, NaN in a
recipe, regexes RE2 cannot run) are tests/recipes_bad/ (docs/recipe-errors.md).

``python tests/test_bad_inputs_hostile.py`` prints the messages as the CLI prints them (the
source of the table in docs/errors.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

from aqrecipe.cli import commands as cli
from aqrecipe.errors import EXIT_USER_ERROR, AqrecipeError, EvalError, RecipeError
from aqrecipe.plan.rules import RuleRegexError

CASES = {
    "cli-float-not-finite": "a float flag given NaN or an infinity (`nan`, `inf`, `1e999`): refused before any work",
    "cli-float-out-of-range": "a float flag outside its range (`--target-bpw 0`, `-1`, `40`): says the range",
    "set-regex-unsupported": "a `--set` regex RE2 cannot run (a backreference, lookaround) or Python's re rejects",
    "rule-regex-catastrophic": "a rule regex that is exponential for a backtracking engine: answered at once",
    "rule-shadowed": "a rule that can never choose a tensor: a duplicate, or every tensor taken by rules first",
    "eval-unloadable-gguf": "`eval` of a complete GGUF that llama.cpp refuses: llama.cpp's own reason is quoted",
}

USAGE = None  # the "error class" of an argparse usage error (no JSON document: argparse prints usage)
CATASTROPHIC = "re:^([a-z_.0-9]+)+!$"


@dataclass(frozen=True)
class Scenario:
    argv: list[str]
    error: type[AqrecipeError] | None
    words: tuple[str, ...]
    outputs: tuple[Path, ...] = ()


@dataclass
class Outcome:
    code: int
    message: str  # the error's message (JSON for AqrecipeErrors, argparse's line for usage errors)
    hint: str | None
    kind: str | None


def run_cli(argv: list[str], *, as_json: bool = True) -> Outcome:
    at = 2 if argv[0] == "imatrix" else 1
    full = [*argv[:at], "--json", *argv[at:]] if as_json else argv
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(full)
        except SystemExit as exc:
            code = int(exc.code)
    text = out.getvalue() + err.getvalue()
    assert "Traceback" not in text, text
    if code == EXIT_USER_ERROR and out.getvalue().lstrip().startswith("{"):
        doc = json.loads(out.getvalue())["error"]
        return Outcome(code, doc["message"], doc["hint"], doc["type"])
    usage = [ln for ln in err.getvalue().splitlines() if ": error: " in ln]
    return Outcome(code, usage[-1] if usage else err.getvalue(), None, None)


def check(s: Scenario) -> Outcome:
    outcome = run_cli(s.argv)
    assert outcome.code == EXIT_USER_ERROR, outcome
    if s.error is USAGE:
        assert outcome.kind is None, outcome
    else:
        assert outcome.kind == s.error.__name__ and outcome.hint, outcome
    for word in s.words:
        assert word in outcome.message, f"{word!r} not in {outcome.message!r}"
    for dest in s.outputs:
        assert not dest.exists(), f"{dest} was written"
    return outcome


def write_recipe(folder: Path, model: Path, rules: list[tuple[str, str]], name: str = "r.yaml") -> Path:
    body = "".join(f"    - match: {json.dumps(m)}\n      type: {t}\n" for m, t in rules)
    path = folder / name
    path.write_text(f"version: 1\nmodel: {model}\nquantization:\n  default: Q8_0\n  rules:\n{body}"
                    "evaluation: {enabled: false}\n")
    return path


# --- the cases ---------------------------------------------------------------------------
def cli_float_not_finite(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    dest = tmp / "o.gguf"
    return [Scenario(["quantize", "demo", "--type", "Q4_K", "--target-bpw", v, "-o", str(dest)], USAGE,
                     ("argument --target-bpw", "not finite", "> 0 and <= 32"), (dest,)) for v in ("nan", "inf", "1e999")]


def cli_float_out_of_range(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    dest = tmp / "o.gguf"
    return [Scenario(["quantize", "demo", "--type", "Q4_K", "--target-bpw", v, "-o", str(dest)], USAGE,
                     ("argument --target-bpw", "must be a finite number > 0 and <= 32", f"got '{v}'"), (dest,))
            for v in ("0", "-1", "40")]


def set_regex_unsupported(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    recipe = write_recipe(tmp, model(), [("blk.*.attn_v.weight", "Q8_0")])
    plan = tmp / "plan.json"
    return [
        Scenario(["compile", str(recipe), "-o", str(plan), "--set", r"re:^blk\.(\d+)\.attn_v\.weight\1=Q8_0"],
                 RuleRegexError, ("--set", "cannot be matched in linear time", "invalid escape sequence"), (plan,)),
        Scenario(["compile", str(recipe), "-o", str(plan), "--set", "re:^blk(?!\\.0)=Q8_0"],
                 RuleRegexError, ("--set", "linear time", "(?!"), (plan,)),
        Scenario(["compile", str(recipe), "-o", str(plan), "--set", "re:blk.(=Q8_0"],
                 RuleRegexError, ("--set", "invalid regular expression", "position"), (plan,)),
    ]


def rule_regex_catastrophic(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    recipe = write_recipe(tmp, model(), [(CATASTROPHIC, "Q8_0")])
    return [Scenario(["validate", str(recipe)], RecipeError, ("R201", CATASTROPHIC, "matches no tensor")),
            Scenario(["validate", str(write_recipe(tmp, model(), [("re:^(blk|[a-z]+)*\\d$", "Q8_0")], "r2.yaml"))],
                     RecipeError, ("R201", "matches no tensor"))]


def rule_shadowed(tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    shadowed = write_recipe(tmp, model(), [("blk.*.weight", "Q8_0"), ("blk.*.ffn_down.weight", "Q6_K")])
    duplicate = write_recipe(tmp, model(), [("re:attn_v", "Q8_0"), ("re:attn_v", "Q6_K")], "dup.yaml")
    norms = write_recipe(tmp, model(), [("blk.*.attn_norm.weight", "Q8_0")], "norm.yaml")
    return [Scenario(["validate", str(shadowed)], RecipeError,
                     ("R201", "never reached: rules[0] 'blk.*.weight' above already matches every tensor it matches")),
            Scenario(["validate", str(duplicate)], RecipeError, ("R201", "duplicate of rules[0] 're:attn_v'")),
            Scenario(["validate", str(norms)], RecipeError, ("R201", "matches only tensors that stay F32"))]


def eval_unloadable_gguf(tmp: Path, model: Callable[[], Path]) -> Scenario:
    pytest.importorskip("llama_cpp")
    path = tmp / "model.gguf"  # complete and well-formed, but without the keys llama.cpp's llama loader needs
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_tensor("token_embd.weight", np.ones((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Scenario(["eval", str(path), "--chunks", "1", "--context", "16"], EvalError,
                    ("could not load", "llama.cpp said:", "key not found in model: llama.context_length"))


BUILDERS: dict[str, Callable[[Path, Callable[[], Path]], Scenario | list[Scenario]]] = {
    "cli-float-not-finite": cli_float_not_finite,
    "cli-float-out-of-range": cli_float_out_of_range,
    "set-regex-unsupported": set_regex_unsupported,
    "rule-regex-catastrophic": rule_regex_catastrophic,
    "rule-shadowed": rule_shadowed,
    "eval-unloadable-gguf": eval_unloadable_gguf,
}


def scenarios(case_id: str, tmp: Path, model: Callable[[], Path]) -> list[Scenario]:
    built = BUILDERS[case_id](tmp, model)
    return built if isinstance(built, list) else [built]


def test_every_case_has_a_builder() -> None:
    assert sorted(BUILDERS) == sorted(CASES)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input(case_id: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    for s in scenarios(case_id, tmp_path, lambda: request.getfixturevalue("tiny_llama_dir")):
        check(s)


def print_messages() -> None:  # pragma: no cover - a helper for docs/errors.md
    """Print each case's first scenario's message, as the CLI prints it, as a table row."""
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers_docs import print_case_rows

    def describe(s, printed: list[str]) -> tuple[str, list[str]]:
        if s.error is USAGE:  # argparse's own line, not the usage text
            return "usage error", [ln for ln in printed if ": error: " in ln]
        return f"`{s.error.__name__}`", [ln for ln in printed if ln.startswith(("error[", "  "))]

    print_case_rows(CASES, scenarios, describe)


if __name__ == "__main__":  # pragma: no cover
    print_messages()
