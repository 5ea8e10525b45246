"""llama.cpp as the yardstick: its own quantizer (through llama-cpp-python's C API) and greedy generation.

Used by the tests that check our files against llama.cpp and by the benchmarks.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import gguf


def llama_quantize(src: Path, dest: Path, file_type: str, *, nthread: int = 2, imatrix_path: Path | None = None) -> None:
    """Run llama.cpp's ``llama_model_quantize`` on ``src`` (an F16/F32 GGUF)."""
    import llama_cpp

    if imatrix_path is not None:
        raise NotImplementedError("imatrix through the C API is not wired; use the llama-quantize tool")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = int(gguf.LlamaFileType[f"MOSTLY_{file_type}"])
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc}")


def tensor_types(path: Path) -> dict[str, str]:
    """Tensor name -> GGML type name of a GGUF file."""
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def greedy(path: Path, prompt: str, n_tokens: int = 16) -> str:
    """Greedy continuation of ``prompt`` by llama.cpp (in aqrecipe's isolated worker, so a
    llama.cpp crash fails the test instead of killing pytest)."""
    from aqrecipe.evaluate.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(path, n_ctx=256)
    try:
        return backend.generate(prompt, n_tokens)["text"]
    finally:
        backend.close()
