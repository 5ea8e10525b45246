"""Text for the terminal: user strings with control characters shown as escapes.

Messages quote what users and files wrote: recipe values, tensor names from a
model's header, paths. A name holding ``ESC [ 2 J`` (clear screen), ``ESC ] 52``
(write the clipboard) or a right-to-left override would act on the terminal
instead of being shown. Every line the CLI prints as text goes through
:func:`printable` (error messages and hints, command output, log records);
``--json`` output needs nothing, as JSON escapes control characters itself.
"""

from __future__ import annotations

import logging
import re

# C0 controls but newline and tab, DEL, C1 controls (8-bit CSI, OSC ...), line and paragraph
# separators, and the invisible marks that reorder text (bidi embeddings, overrides, isolates).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character that would control the terminal written as ``\\xNN`` / ``\\uNNNN``.

    Newlines and tabs stay: messages are multi-line on purpose.
    """
    return _UNSAFE.sub(_escape, text)


class PrintableFormatter(logging.Formatter):
    """A log formatter whose records (message, arguments, traceback) are :func:`printable`."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))
