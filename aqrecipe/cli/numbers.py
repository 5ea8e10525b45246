"""The one reader of numbers given on the command line: finite and in range, or refused.

``float("nan")`` and ``float("1e999")`` (infinity) are floats, and NaN compares
false with every bound, so a flag read with plain ``type=float`` lets them through
every later check (issue 16: ``--target-bpw nan`` ran the planner for 5 minutes,
then failed with a traceback). Every float flag is read with :func:`finite_float`,
which argparse reports as a usage error (exit code 2) naming the flag.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def describe_range(low: float | None, high: float | None, *, low_open: bool = False,
                   high_open: bool = False) -> str:
    """The range in words: ``> 0 and <= 32``, ``from 1 to 10``, ``>= 0``, ``any finite number``."""
    if low is not None and high is not None and not low_open and not high_open:
        return f"from {low:g} to {high:g}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts) if parts else "any finite number"


def finite_float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type=`` for a float that is finite and within ``low``/``high``.

    ``low_open`` / ``high_open`` exclude the bound itself (``> 0`` rather than ``>= 0``);
    ``unit`` names what the number counts in the message (``"bits per weight"``).
    """
    span = describe_range(low, high, low_open=low_open, high_open=high_open)
    what = f"a finite number {span}" + (f" ({unit})" if unit else "")

    def read(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}, which is not finite")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    read.__name__ = "finite number"  # argparse names the type in its fallback message
    return read
