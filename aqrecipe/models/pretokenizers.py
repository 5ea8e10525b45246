"""llama.cpp pre-tokenizer names <-> HF ``tokenizer.json`` pre_tokenizer structures.

llama.cpp selects its pre-tokenizer regexes by the name in ``tokenizer.ggml.pre``.
We identify the name from the structure of the HF pre_tokenizer (the splitting
steps it performs), which is what actually decides how text is split.
"""

from __future__ import annotations

from typing import Any

# Qwen2's split pattern: contractions, letters with one leading non-letter, single digits, ...
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3's pattern differs only in grouping digits by up to three.
LLAMA3_PATTERN = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

Step = tuple[str, Any]

#: step signature -> llama.cpp pre-tokenizer name
_KNOWN: dict[tuple[Step, ...], str] = {
    (("digits", True), ("bytelevel", True)): "smollm",
    (("split", QWEN2_PATTERN), ("bytelevel", False)): "qwen2",
    (("split", LLAMA3_PATTERN), ("bytelevel", False)): "llama-bpe",
    (("bytelevel", True),): "gpt2",
}


def _steps(node: dict[str, Any] | None) -> list[Step]:
    if not node:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [step for child in node.get("pretokenizers", []) for step in _steps(child)]
    if kind == "ByteLevel":
        return [("bytelevel", bool(node.get("use_regex", True)))]
    if kind == "Digits":
        return [("digits", bool(node.get("individual_digits", False)))]
    if kind == "Split":
        pattern = node.get("pattern", {})
        return [("split", pattern.get("Regex", pattern.get("String")))]
    return [(str(kind), None)]


def detect_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's pre-tokenizer name for a parsed tokenizer.json, or None if unknown."""
    return _KNOWN.get(tuple(_steps(tokenizer_json.get("pre_tokenizer"))))


def pre_tokenizer_for(name: str) -> dict[str, Any] | None:
    """The HF pre_tokenizer JSON that splits text like llama.cpp's ``name``, if known."""
    bytelevel = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    if name == "smollm":
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {**bytelevel, "use_regex": True},
            ],
        }
    if name in ("qwen2", "llama-bpe"):
        pattern = QWEN2_PATTERN if name == "qwen2" else LLAMA3_PATTERN
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {**bytelevel, "use_regex": False},
            ],
        }
    if name == "gpt2":
        return {**bytelevel, "use_regex": True}
    return None
