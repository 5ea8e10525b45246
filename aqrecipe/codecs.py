"""Public face of the Rust codecs (``from aqrecipe import codecs``); the code is :mod:`aqrecipe.quant.codecs`."""

from aqrecipe.quant.codecs import *  # noqa: F401,F403
from aqrecipe.quant.codecs import __all__  # noqa: F401
