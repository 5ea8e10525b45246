"""JSON paths (``$.quantization.rules[1].type``) to and from key sequences."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

Key = str | int
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[(['"])((?:\\.|(?!\3).)*)\3\]""")


def format_path(keys: Iterable[Key]) -> str:
    """``["quantization", "rules", 1]`` -> ``$.quantization.rules[1]``."""
    out = ["$"]
    for key in keys:
        if isinstance(key, int) and not isinstance(key, bool):
            out.append(f"[{key}]")
        elif isinstance(key, str) and _IDENT.match(key):
            out.append(f".{key}")
        else:
            text = str(key).replace("\\", "\\\\").replace("'", "\\'")
            out.append(f"['{text}']")
    return "".join(out)


def parse_path(path: str | Sequence[Key]) -> tuple[Key, ...]:
    """Inverse of :func:`format_path`; a sequence of keys is returned as a tuple.

    Raises ``ValueError`` for text that is not a JSON path of this form.
    """
    if not isinstance(path, str):
        return tuple(path)
    if not path.startswith("$"):
        raise ValueError(f"JSON path must start with '$': {path!r}")
    keys: list[Key] = []
    pos = 1
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None:
            raise ValueError(f"malformed JSON path {path!r} at offset {pos}")
        if m.group(1) is not None:
            keys.append(m.group(1))
        elif m.group(2) is not None:
            keys.append(int(m.group(2)))
        else:
            keys.append(re.sub(r"\\(.)", r"\1", m.group(4)))
        pos = m.end()
    return tuple(keys)
