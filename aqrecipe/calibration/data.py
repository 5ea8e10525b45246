"""Calibration text -> token windows ``[samples, seq_len]``.

Sources: the built-in Wikipedia calibration split, a UTF-8 text file, a JSON-lines
file (one field per record) or a Hugging Face dataset (needs ``datasets`` and a
network). Text is tokenized with the model's own tokenizer and windows are drawn
deterministically by :func:`aqrecipe.formats.corpus.sample_token_windows`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from aqrecipe.errors import CalibrationDataError

SOURCE_TYPES = ("builtin-wiki", "text", "jsonl", "hf-dataset")
MIN_SAMPLES, MAX_SAMPLES = 128, 1024
_ALTERNATIVES = (
    "use the built-in Wikipedia sample (source builtin-wiki), a text file (source text, "
    "path=...) or a JSON-lines file (source jsonl, path=..., field=...); when online, "
    "WikiText-2 raw (hf-dataset name=wikitext config=wikitext-2-raw-v1 split=train "
    "field=text) is the standard choice"
)


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration text comes from and how many windows of it to use."""

    source: str = "builtin-wiki"
    path: str | None = None
    field: str = "text"
    name: str | None = None  # hf-dataset
    config: str | None = None  # hf-dataset
    split: str = "train"  # hf-dataset
    samples: int = 512
    seq_len: int = 512
    seed: int = 0
    #: mixture-of-experts models: run every expert on every token for its statistics (llm-compressor's
    #: moe_calibrate_all_experts) instead of only the tokens the router sends it (llama-imatrix's way)
    all_experts: bool = False
    # Off only for tests and tiny models: the range keeps statistics meaningful.
    enforce_sample_range: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCE_TYPES:
            raise CalibrationDataError(
                f"unknown calibration source {self.source!r}",
                hint=f"use one of {', '.join(SOURCE_TYPES)}",
            )
        if self.source in ("text", "jsonl") and not self.path:
            raise CalibrationDataError(
                f"calibration source {self.source!r} needs a path", hint="give path=FILE"
            )
        if self.source == "hf-dataset" and not self.name:
            raise CalibrationDataError(
                "calibration source 'hf-dataset' needs a dataset name",
                hint="e.g. name=wikitext config=wikitext-2-raw-v1 split=train field=text",
            )
        if self.enforce_sample_range and not MIN_SAMPLES <= self.samples <= MAX_SAMPLES:
            raise CalibrationDataError(
                f"calibration samples must be in {MIN_SAMPLES}..{MAX_SAMPLES}, got {self.samples}",
                hint="512 is the default; fewer than 128 gives noisy statistics",
            )
        if self.samples < 1 or self.seq_len < 1:
            raise CalibrationDataError(
                f"samples and seq_len must be positive (got {self.samples}, {self.seq_len})",
                hint="the defaults are 512 samples of 512 tokens",
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.all_experts:  # absent unless set: earlier runs' fingerprints stay valid
            d.pop("all_experts")
        return d

    def describe(self) -> str:
        """A short dataset label (stored in the imatrix's ``imatrix.datasets``)."""
        if self.source == "builtin-wiki":
            return "aqrecipe:builtin-wiki"
        if self.source in ("text", "jsonl"):
            return str(self.path)
        return f"hf:{self.name}" + (f"/{self.config}" if self.config else "") + f":{self.split}"

    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def load_calibration_text(spec: CalibrationSpec) -> str:
    """The calibration text of ``spec`` as one string (documents split by blank lines)."""
    from aqrecipe.formats import corpus

    if spec.source == "builtin-wiki":
        return corpus.join_articles(corpus.calibration_articles())
    if spec.source == "text":
        return corpus.load_text_file(spec.path)
    if spec.source == "jsonl":
        return "\n\n".join(corpus.load_jsonl(spec.path, spec.field))
    return _load_hf_dataset(spec)


def _load_hf_dataset(spec: CalibrationSpec) -> str:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise CalibrationDataError(
            "calibration source 'hf-dataset' needs the 'datasets' package, which is not installed",
            hint=f"pip install datasets, or {_ALTERNATIVES}",
        ) from None
    try:
        ds = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except Exception as exc:  # offline, unknown dataset, missing split ...
        raise CalibrationDataError(
            f"could not load Hugging Face dataset {spec.describe()}: {type(exc).__name__}: {exc}",
            hint=f"check the name and that you are online, or {_ALTERNATIVES}",
        ) from None
    if spec.field not in ds.column_names:
        raise CalibrationDataError(
            f"dataset {spec.describe()} has no field {spec.field!r} (fields: {ds.column_names})",
            hint="name the text field with field=...",
        )
    return "\n\n".join(str(t) for t in ds[spec.field] if t)


def tokenize_text(tokenizer: Any, text: str) -> tuple[np.ndarray, int | None]:
    """Token ids of ``text`` (no special tokens) and the BOS id when the tokenizer adds one."""
    from aqrecipe.calibration.heap import trim_heap

    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    # The tokenizer's per-token objects are freed by now but glibc keeps their pages
    # (about 200 MB for the built-in corpus); hand them back before the model loads.
    trim_heap()
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    adds_bos = bos is not None and len(probe) > 0 and probe[0] == bos
    return ids, (int(bos) if adds_bos else None)


def calibration_windows(spec: CalibrationSpec, tokenizer: Any) -> np.ndarray:
    """``[samples, seq_len]`` int64 token windows for ``spec``.

    Like llama.cpp's imatrix tool, the first token of every window is replaced by
    BOS when the tokenizer adds one, so each window looks like a fresh context.
    """
    from aqrecipe.formats import corpus

    text = load_calibration_text(spec)
    ids, bos = tokenize_text(tokenizer, text)
    needed = spec.samples * spec.seq_len
    if ids.size < needed:
        fit = ids.size // spec.seq_len
        raise CalibrationDataError(
            f"calibration text from {spec.describe()} has {ids.size} tokens; "
            f"{spec.samples} samples x {spec.seq_len} tokens need {needed}",
            hint=f"give more text, or use at most {fit} samples of {spec.seq_len} tokens "
            "(or shorter samples)",
        )
    windows = np.array(corpus.sample_token_windows(ids, spec.samples, spec.seq_len, spec.seed))
    if bos is not None:
        windows[:, 0] = bos
    return windows.astype(np.int64, copy=False)


def load_tokenizer(model_path: str) -> Any:
    """The model's Hugging Face tokenizer (quiet about long inputs)."""
    from aqrecipe.optional import require

    transformers = require("transformers", "tokenizing calibration text with the model's tokenizer")
    tok = transformers.AutoTokenizer.from_pretrained(str(model_path))
    tok.model_max_length = 1 << 40  # we cut windows ourselves; silence the length warning
    return tok
