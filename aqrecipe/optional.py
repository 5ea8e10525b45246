"""Optional dependencies: one guarded import for every extra aqrecipe can use.

``import aqrecipe`` needs only numpy, gguf, safetensors, numba, pyyaml and
jsonschema. Everything else is an extra (``pip install 'aqrecipe[NAME]'``) and is
imported through :func:`require`, which turns a missing package into a
:class:`~aqrecipe.errors.DependencyError` that names the package, what needed
it and the command that installs it, instead of a ``ModuleNotFoundError``
traceback. :func:`available` asks without importing, and :func:`require_or_skip`
imports or logs a warning, for the checks that are skipped when the user did
not ask for them (progress bars, automatic plots and checks).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import ModuleType

from aqrecipe.errors import DependencyError

__all__ = ["EXTRAS", "available", "install_hint", "require", "require_or_skip", "require_torch"]

log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()

#: Top-level module -> (PyPI distribution, aqrecipe extra that installs it).
EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "transformers": ("transformers", "torch"),
    "accelerate": ("accelerate", "torch"),
    "llama_cpp": ("llama-cpp-python", "eval"),
    "gensim": ("gensim", "eval"),
    "compressed_tensors": ("compressed-tensors", "w8a8"),
    "matplotlib": ("matplotlib", "plot"),
    "tqdm": ("tqdm", "progress"),
}


def install_hint(module: str) -> str:
    """The command that installs ``module``'s extra (or the package itself)."""
    dist, extra = EXTRAS[module.split(".")[0]]
    return f"pip install 'aqrecipe[{extra}]' (or pip install {dist})"


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"torch"``, ``"matplotlib.pyplot"``) or explain what is missing.

    ``purpose`` completes the sentence "<purpose> needs <package>", e.g.
    ``"evaluating a GGUF file"``.
    """
    top = module.split(".")[0]
    if top not in EXTRAS:
        raise KeyError(f"{top!r} is not a known optional dependency; add it to aqrecipe.optional.EXTRAS")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or top
        dist = EXTRAS[top][0]
        detail = "" if missing in (top, module) else f" (importing it failed: {exc})"
        raise DependencyError(
            f"{purpose} needs {dist}, which is not installed{detail}",
            hint=install_hint(top),
        ) from exc


def require_torch(purpose: str) -> tuple[ModuleType, ModuleType]:
    """``(torch, transformers)``, which every forward pass in torch needs."""
    return require("torch", purpose), require("transformers", purpose)


def require_or_skip(module: str, skipped: str) -> ModuleType | None:
    """``module``, or None after a warning (once per process) that ``skipped`` did not run and
    how to install what it needs. For what runs without being asked for; what the user asked
    for uses :func:`require`."""
    try:
        return require(module, skipped)
    except DependencyError as exc:
        if (module, skipped) not in _warned:
            _warned.add((module, skipped))
            log.warning("skipped %s: %s; to enable it: %s", skipped, exc.message.removeprefix(f"{skipped} "),
                        exc.hint)
        return None
