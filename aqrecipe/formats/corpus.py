"""Built-in text corpus and user text loading for calibration and evaluation.

The built-in corpus is the English Wikipedia sample that ships in gensim's test
data (about a hundred articles). It is parsed once (bz2 XML dump, wiki markup
stripped to plain prose with paragraphs separated by blank lines) and cached as
JSON under ``$AQRECIPE_CACHE`` (default ``~/.cache/aqrecipe``).

Articles are split deterministically and disjointly by a stable hash of their
title: about 80 % go to calibration, 20 % to evaluation, so a model is never
evaluated on the text it was calibrated on.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from aqrecipe.errors import AqrecipeError, CalibrationDataError, DependencyError
from aqrecipe.formats.bounded import read_bounded
from aqrecipe.optional import available, require

__all__ = [
    "Article",
    "builtin_articles",
    "calibration_articles",
    "evaluation_articles",
    "join_articles",
    "calibration_text",
    "evaluation_text",
    "is_evaluation_title",
    "load_text_file",
    "load_jsonl",
    "sample_token_windows",
    "cache_dir",
    "MIN_TEXT_CHARS",
    "EVAL_PERCENT",
]

WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CORPUS_VERSION = 2  # bump when the cleaning rules change: invalidates the cache
EVAL_PERCENT = 20  # share of articles (by title hash) held out for evaluation
MIN_ARTICLE_CHARS = 500  # shorter pages (stubs, lists, disambiguations) are dropped
MIN_PARAGRAPH_CHARS = 40
MIN_TEXT_CHARS = 256  # user text shorter than this is refused
_BUILTIN = "the built-in Wikipedia text (calibration and evaluation default; or pass your own text file)"

# Sections after which a Wikipedia article holds no prose worth keeping.
_TRAILING_SECTIONS = {
    "references", "see also", "external links", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes", "notes and references", "works cited", "works",
    "publications", "discography", "filmography",
}
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_LIST_OR_TABLE = re.compile(r"^[*#:;|!{}]")
_EMPTY_PARENS = re.compile(r"\(\s*[,;:]?\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:)])")
_MULTISPACE = re.compile(r"[ \t\u00a0]+")


@dataclass(frozen=True)
class Article:
    """One cleaned article: its title and plain-prose text (paragraphs split by blank lines)."""

    title: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "text": self.text}


# --- the built-in corpus -------------------------------------------------------------------


class BuiltinCorpusDependencyError(DependencyError, CalibrationDataError):
    """gensim (which ships the Wikipedia sample) is missing: a missing dependency (AQ900) that
    callers expecting "no calibration text" (CalibrationDataError) still catch."""

    code = DependencyError.code


def cache_dir() -> Path:
    """The cache folder: ``$AQRECIPE_CACHE`` or ``~/.cache/aqrecipe``."""
    env = os.environ.get("AQRECIPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aqrecipe"


def _wiki_sample_path() -> Path:
    """Locate gensim's Wikipedia sample without importing gensim itself (a cached corpus
    still checks the file's size); without gensim, a DependencyError."""
    if not available("gensim"):
        try:
            require("gensim", _BUILTIN)
        except DependencyError as exc:
            raise BuiltinCorpusDependencyError(exc.message, hint=exc.hint) from None
    spec = importlib.util.find_spec("gensim")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / "test" / "test_data" / WIKI_SAMPLE
        if candidate.is_file():
            return candidate
    raise CalibrationDataError(
        "the built-in Wikipedia corpus is not available: gensim's test data file "
        f"{WIKI_SAMPLE} was not found",
        hint="install gensim (pip install 'aqrecipe[eval]' or pip install gensim), "
        "or pass your own text file",
    )


def _clean_line(line: str) -> str:
    line = line.replace("'''", "").replace("''", "")
    line = _EMPTY_PARENS.sub("", line)
    line = _MULTISPACE.sub(" ", line).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", line)


def _is_markup_leftover(text: str) -> bool:
    """Gallery entries and image captions that the wiki filter leaves behind."""
    return text.startswith(("<", "{{", "[[", "File:", "Image:")) or "|" in text or "alt=" in text


def clean_wikitext(raw: str) -> str:
    """Turn raw wikitext into plain prose: paragraphs split by blank lines.

    Markup is removed with gensim's wiki filter; then list, table and leftover
    markup lines are dropped, headings become their own short paragraph (only
    when prose follows them), and the article ends at the first trailing
    section such as "References" or "External links".
    """
    filter_wiki = require("gensim.corpora.wikicorpus", _BUILTIN).filter_wiki  # heavy: only on a cache miss

    blocks: list[tuple[bool, str]] = []  # (is_heading, text)
    for line in filter_wiki(raw).splitlines():
        stripped = line.strip()
        heading = _HEADING.match(stripped)
        if heading:
            title = _clean_line(heading.group(2))
            if title.lower() in _TRAILING_SECTIONS:
                break
            blocks.append((True, title))
            continue
        if not stripped or _LIST_OR_TABLE.match(stripped):
            continue
        text = _clean_line(stripped)
        if len(text) >= MIN_PARAGRAPH_CHARS and not _is_markup_leftover(text):
            blocks.append((False, text))
    # keep a heading only when a paragraph follows it
    kept = [
        text
        for i, (is_heading, text) in enumerate(blocks)
        if not is_heading or (i + 1 < len(blocks) and not blocks[i + 1][0])
    ]
    return "\n\n".join(kept)


def _parse_dump(path: Path) -> list[Article]:
    articles: list[Article] = []
    with bz2.open(path, "rb") as fh:
        for _event, elem in ET.iterparse(fh):
            if not elem.tag.endswith("}page"):
                continue
            ns = elem.tag[: -len("page")]
            title = (elem.findtext(f"{ns}title") or "").strip()
            namespace = elem.findtext(f"{ns}ns") or "0"
            raw = elem.findtext(f"{ns}revision/{ns}text") or ""
            is_redirect = elem.find(f"{ns}redirect") is not None or raw.lstrip().lower().startswith(
                "#redirect"
            )
            if title and namespace == "0" and not is_redirect:
                text = clean_wikitext(raw)
                if len(text) >= MIN_ARTICLE_CHARS:
                    articles.append(Article(title, text))
            elem.clear()
    return articles


def _write_json_atomic(dest: Path, payload: object) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_cached(cache_file: Path, source: Path) -> list[Article] | None:
    try:
        payload = json.loads(read_bounded(cache_file, kind="cache", what="corpus cache"))
    except (OSError, ValueError, AqrecipeError):  # a damaged or odd cache only costs a re-parse
        return None
    if not isinstance(payload, dict) or payload.get("version") != CORPUS_VERSION:
        return None
    if payload.get("source_size") != source.stat().st_size:
        return None
    return [Article(a["title"], a["text"]) for a in payload["articles"]]


@lru_cache(maxsize=1)
def _builtin_cached(cache_root: str) -> tuple[Article, ...]:
    source = _wiki_sample_path()
    cache_file = Path(cache_root) / "corpus" / f"enwiki-sample-v{CORPUS_VERSION}.json"
    articles = _load_cached(cache_file, source)
    if articles is None:
        articles = _parse_dump(source)
        payload = {
            "version": CORPUS_VERSION,
            "source": WIKI_SAMPLE,
            "source_size": source.stat().st_size,
            "articles": [a.to_dict() for a in articles],
        }
        try:
            _write_json_atomic(cache_file, payload)
        except OSError:
            pass  # a read-only cache only costs a re-parse next time
    # stable order: sorted by title (independent of the dump's order and of the cache)
    return tuple(sorted(articles, key=lambda a: a.title))


def builtin_articles() -> tuple[Article, ...]:
    """All cleaned articles of the built-in corpus, sorted by title."""
    return _builtin_cached(str(cache_dir()))


def is_evaluation_title(title: str) -> bool:
    """True when an article with this title belongs to the evaluation split (stable hash)."""
    digest = hashlib.sha256(title.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < EVAL_PERCENT


def calibration_articles() -> tuple[Article, ...]:
    """The ~80 % of built-in articles used for calibration (disjoint from evaluation)."""
    return tuple(a for a in builtin_articles() if not is_evaluation_title(a.title))


def evaluation_articles() -> tuple[Article, ...]:
    """The ~20 % of built-in articles held out for evaluation."""
    return tuple(a for a in builtin_articles() if is_evaluation_title(a.title))


def join_articles(articles: tuple[Article, ...] | list[Article]) -> str:
    """Concatenate article texts into one document, separated by blank lines."""
    return "\n\n".join(a.text for a in articles)


def calibration_text() -> str:
    """The calibration split as one string."""
    return join_articles(calibration_articles())


def evaluation_text() -> str:
    """The evaluation split as one string."""
    return join_articles(evaluation_articles())


# --- user text -----------------------------------------------------------------------------


def _read_utf8(path: str | os.PathLike[str], what: str) -> str:
    p = Path(path)
    if not p.exists():
        raise CalibrationDataError(
            f"{what} {str(p)!r} does not exist", hint="check the path (a recipe's paths are relative to "
            "the recipe file, command-line paths to the current folder)"
        )
    data = read_bounded(p, kind="text", what=what, error=CalibrationDataError)  # folders, FIFOs, /dev/zero refused
    if b"\x00" in data:
        raise CalibrationDataError(
            f"{what} {str(p)!r} looks binary (it contains NUL bytes)",
            hint="pass a plain UTF-8 text file, not a tokenized or compressed file",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationDataError(
            f"{what} {str(p)!r} is not valid UTF-8 (byte offset {exc.start})",
            hint="convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 in.txt > out.txt",
        ) from None


def _check_length(text: str, source: str, min_chars: int) -> None:
    n = len(text.strip())
    if n == 0:
        raise CalibrationDataError(f"{source} is empty", hint="pass a file with some prose in it")
    if n < min_chars:
        raise CalibrationDataError(
            f"{source} is too short: {n} characters, at least {min_chars} needed",
            hint="use more text (a few thousand words calibrate and evaluate far better), "
            "or omit the option to use the built-in Wikipedia sample",
        )


def load_text_file(path: str | os.PathLike[str], *, min_chars: int = MIN_TEXT_CHARS) -> str:
    """Read a UTF-8 text file for calibration or evaluation.

    Raises :class:`CalibrationDataError` when the file is missing, binary, not
    UTF-8, empty or shorter than ``min_chars`` characters.
    """
    text = _read_utf8(path, "text file")
    _check_length(text, f"text file {str(path)!r}", min_chars)
    return text


def load_jsonl(
    path: str | os.PathLike[str], field: str = "text", *, min_chars: int = MIN_TEXT_CHARS
) -> list[str]:
    """Read the string ``field`` of every record in a JSON-lines file (blank lines skipped).

    Raises :class:`CalibrationDataError` for a missing or binary file, a line that
    is not a JSON object, a record without ``field`` or with a non-string value,
    and when the records hold fewer than ``min_chars`` characters in total.
    """
    raw = _read_utf8(path, "JSON-lines file")
    texts: list[str] = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{str(path)!r} line {lineno}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CalibrationDataError(
                f"{where} is not valid JSON: {exc}", hint="each line must be one JSON object"
            ) from None
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise CalibrationDataError(
                f"{where} has no field {field!r} (found: {keys})",
                hint="name the field that holds the text (e.g. --field text)",
            )
        value = record[field]
        if not isinstance(value, str):
            raise CalibrationDataError(
                f"{where}: field {field!r} is a {type(value).__name__}, not a string",
                hint="the text field must hold a JSON string",
            )
        texts.append(value)
    _check_length("\n\n".join(texts), f"JSON-lines file {str(path)!r}", min_chars)
    return texts


# --- token windows -------------------------------------------------------------------------


def sample_token_windows(
    token_ids: np.ndarray, n_samples: int, seq_len: int, seed: int = 0
) -> np.ndarray:
    """Pick ``n_samples`` disjoint windows of ``seq_len`` tokens from a token stream.

    The stream is cut into ``len // seq_len`` aligned, non-overlapping windows;
    ``n_samples`` of them are chosen with a seeded generator and returned in
    stream order, so the result depends only on the inputs. Returns an array of
    shape ``[n_samples, seq_len]`` with the stream's dtype.
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {ids.shape}")
    if n_samples <= 0 or seq_len <= 0:
        raise ValueError(f"n_samples and seq_len must be positive (got {n_samples}, {seq_len})")
    needed = n_samples * seq_len
    if ids.size < needed:
        fit = ids.size // seq_len
        raise CalibrationDataError(
            f"the text has {ids.size} tokens, but {n_samples} windows of {seq_len} tokens "
            f"need {needed}",
            hint=f"use more text, or ask for at most {fit} windows of {seq_len} tokens "
            "(or shorter windows)",
        )
    available = ids.size // seq_len
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(available, size=n_samples, replace=False))
    starts = chosen * seq_len
    return np.stack([ids[s : s + seq_len] for s in starts])
