"""``python -m aqrecipe.models.converter install``: set up llama.cpp's converter (make install runs it)."""

from __future__ import annotations

import sys

from aqrecipe.errors import AqrecipeError
from aqrecipe.models.converter.bundle import CONVERTER_VERSION, install


def main(argv: list[str]) -> int:
    if argv != ["install"]:
        print("usage: python -m aqrecipe.models.converter install", file=sys.stderr)
        return 2
    try:
        folder = install()
    except AqrecipeError as exc:
        print(f"error[{exc.code}]: {exc}", file=sys.stderr)
        return 2
    print(f"llama.cpp converter of llama-cpp-python {CONVERTER_VERSION}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
