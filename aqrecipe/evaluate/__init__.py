"""Quality evaluation: perplexity, KL divergence and top-1 agreement against a reference.

Backends: GGUF files through llama-cpp-python, Hugging Face folders through
transformers. Importing this package imports neither torch nor llama_cpp; a
backend imports its library when it is opened.
"""

from aqrecipe.evaluate.backends import DEMO, LogitsBackend, open_backend
from aqrecipe.evaluate.cached import CachedBackend
from aqrecipe.evaluate.metrics import MetricsAccumulator, log_softmax, token_kld
from aqrecipe.evaluate.report import QualityReport, format_report_table
from aqrecipe.evaluate.runner import BUILTIN_TEXT, eval_windows, evaluate

__all__ = [
    "BUILTIN_TEXT",
    "CachedBackend",
    "DEMO",
    "LogitsBackend",
    "MetricsAccumulator",
    "QualityReport",
    "eval_windows",
    "evaluate",
    "format_report_table",
    "log_softmax",
    "open_backend",
    "token_kld",
    "LlamaCppBackend",
    "TorchBackend",
]


def __getattr__(name: str):
    """Backend classes load lazily so that importing this package stays light."""
    if name == "LlamaCppBackend":
        from aqrecipe.evaluate.llamacpp import LlamaCppBackend

        return LlamaCppBackend
    if name == "TorchBackend":
        from aqrecipe.evaluate.torch_backend import TorchBackend

        return TorchBackend
    raise AttributeError(f"module 'aqrecipe.evaluate' has no attribute {name!r}")
