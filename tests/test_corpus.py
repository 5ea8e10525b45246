"""Built-in corpus (split, determinism, cleaning), user text loading, token windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aqrecipe.formats import corpus
from aqrecipe.errors import CalibrationDataError



@pytest.fixture(scope="module")
def articles() -> tuple[corpus.Article, ...]:
    try:
        return corpus.builtin_articles()
    except CalibrationDataError as exc:  # gensim missing
        pytest.skip(str(exc))


# --- built-in corpus -----------------------------------------------------------------------


def test_builtin_corpus_is_sorted_clean_prose(articles):
    assert len(articles) > 50
    titles = [a.title for a in articles]
    assert titles == sorted(titles) and len(set(titles)) == len(titles)
    text = corpus.join_articles(articles)
    for leftover in ("[[", "]]", "{{", "}}", "|", "<ref", "'''"):
        assert leftover not in text, leftover
    assert all(len(a.text) >= corpus.MIN_ARTICLE_CHARS for a in articles)
    assert all("\n\n\n" not in a.text for a in articles)
    # redirect pages (e.g. AccessibleComputing -> Computer accessibility) are dropped
    assert "AccessibleComputing" not in titles
    assert any(a.title == "Anarchism" and "political philosophy" in a.text for a in articles)


def test_split_is_disjoint_and_covers_everything(articles):
    cal = corpus.calibration_articles()
    ev = corpus.evaluation_articles()
    cal_titles = {a.title for a in cal}
    ev_titles = {a.title for a in ev}
    assert not cal_titles & ev_titles
    assert cal_titles | ev_titles == {a.title for a in articles}
    assert 0.1 < len(ev) / len(articles) < 0.35  # about EVAL_PERCENT
    assert len(corpus.evaluation_text()) > 100_000  # enough for 16 x 512 tokens


def test_split_is_deterministic_by_title():
    # the hash split depends on the title only (fixed values guard against a silent change)
    flags = [corpus.is_evaluation_title(t) for t in ("Anarchism", "Autism", "Abacus", "ASCII")]
    assert flags == [False, True, False, True]


def test_split_is_deterministic_across_parses(articles, tmp_path, monkeypatch):
    first = (corpus.evaluation_articles(), corpus.calibration_text())
    monkeypatch.setenv("AQRECIPE_CACHE", str(tmp_path))  # a cold cache: the dump is parsed again
    corpus._builtin_cached.cache_clear()
    try:
        assert (corpus.evaluation_articles(), corpus.calibration_text()) == first
        assert (tmp_path / "corpus").is_dir()  # it really was parsed anew, not read from the old cache
    finally:
        corpus._builtin_cached.cache_clear()


def test_cache_roundtrip_and_invalidation(tmp_path: Path):
    source = tmp_path / "dump.bz2"
    source.write_bytes(b"x" * 10)
    cache_file = tmp_path / "c" / "corpus.json"
    payload = {
        "version": corpus.CORPUS_VERSION,
        "source_size": 10,
        "articles": [{"title": "T", "text": "body"}],
    }
    corpus._write_json_atomic(cache_file, payload)
    assert [p.name for p in cache_file.parent.iterdir()] == ["corpus.json"]  # no temp left
    assert corpus._load_cached(cache_file, source) == [corpus.Article("T", "body")]
    source.write_bytes(b"x" * 11)  # another source file -> stale cache
    assert corpus._load_cached(cache_file, source) is None
    cache_file.write_text("{broken", encoding="utf-8")
    assert corpus._load_cached(cache_file, source) is None


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AQRECIPE_CACHE", str(tmp_path))
    assert corpus.cache_dir() == tmp_path
    monkeypatch.delenv("AQRECIPE_CACHE")
    assert corpus.cache_dir() == Path.home() / ".cache" / "aqrecipe"


def test_clean_wikitext_rules():
    pytest.importorskip("gensim")
    raw = (
        "'''Foo''' is a [[bar|thing]] used in {{cite web|x=y}} many places.<ref>r</ref> It is old.\n"
        "== Empty heading ==\n"
        "== History ==\n"
        "In 1900 the foo was ( ) invented by [[John Smith]] , a famous person.\n"
        "* a list item that should not survive in prose\n"
        "== References ==\n"
        "Everything after the references heading is dropped entirely.\n"
    )
    assert corpus.clean_wikitext(raw) == (
        "Foo is a thing used in many places. It is old.\n\n"
        "History\n\n"
        "In 1900 the foo was invented by John Smith, a famous person."
    )


# --- user text -----------------------------------------------------------------------------

LONG = "The quick brown fox jumps over the lazy dog. " * 20


def test_load_text_file_ok(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(LONG, encoding="utf-8")
    assert corpus.load_text_file(p) == LONG
    p.write_bytes(b"\xef\xbb\xbf" + LONG.encode())  # a BOM is not part of the text
    assert corpus.load_text_file(p) == LONG


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"  \n\n ", "is empty"),
        (b"short text", "too short"),
        (b"abc\x00def" * 100, "binary"),
        ("caf\u00e9 ".encode("latin-1") * 100, "not valid UTF-8"),
    ],
)
def test_load_text_file_errors(tmp_path, content, needle):
    p = tmp_path / "t.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CalibrationDataError) as info:
        corpus.load_text_file(p)
    assert needle in info.value.message
    assert info.value.hint and info.value.code == "AQ500"


def test_load_text_file_directory(tmp_path):
    with pytest.raises(CalibrationDataError, match="not a file"):
        corpus.load_text_file(tmp_path)


def test_load_jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": LONG, "id": 1}, {"text": "second", "id": 2}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert corpus.load_jsonl(p, "text") == [LONG, "second"]


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (['{"text": "a"}', "not json"], "line 2 is not valid JSON"),
        (['{"body": "a"}'], "no field 'text'"),
        (["[1, 2]"], "no field 'text'"),
        (['{"text": 5}'], "is a int, not a string"),
        (['{"text": "tiny"}'], "too short"),
        ([], "is empty"),
    ],
)
def test_load_jsonl_errors(tmp_path, lines, needle):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(CalibrationDataError) as info:
        corpus.load_jsonl(p, "text")
    assert needle in info.value.message
    assert info.value.hint


# --- token windows -------------------------------------------------------------------------


def test_sample_token_windows_deterministic_disjoint():
    ids = np.arange(1000, dtype=np.int32)
    a = corpus.sample_token_windows(ids, 5, 64, seed=3)
    b = corpus.sample_token_windows(ids, 5, 64, seed=3)
    c = corpus.sample_token_windows(ids, 5, 64, seed=4)
    assert a.shape == (5, 64) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # each window is a contiguous, aligned slice; windows are disjoint and in stream order
    starts = a[:, 0]
    assert np.all(np.diff(a, axis=1) == 1)
    assert np.all(starts % 64 == 0) and np.all(np.diff(starts) >= 64)


def test_sample_token_windows_uses_all_when_exact():
    ids = np.arange(256)
    np.testing.assert_array_equal(corpus.sample_token_windows(ids, 4, 64, seed=0), ids.reshape(4, 64))


def test_sample_token_windows_too_short():
    with pytest.raises(CalibrationDataError) as info:
        corpus.sample_token_windows(np.arange(1000), 8, 128, seed=0)
    assert "1000 tokens" in info.value.message and "need 1024" in info.value.message
    assert "at most 7 windows" in info.value.hint


def test_sample_token_windows_bad_args():
    with pytest.raises(ValueError):
        corpus.sample_token_windows(np.zeros((2, 2)), 1, 1)
    with pytest.raises(ValueError):
        corpus.sample_token_windows(np.arange(10), 0, 1)
