"""GGUF models through llama-cpp-python, the real consumer of the files we write, in a child process.

llama.cpp is C++: a bug there (or in a build for the wrong CPU) is a segfault or
an abort, not an exception. So the model lives in a worker process
(:mod:`aqrecipe.evaluate.llamacpp_worker`); when it dies, the call that was in
flight raises :class:`~aqrecipe.errors.ConsumerCrashError` naming the signal, the
file and what to try, and aqrecipe itself carries on (the files a run already
wrote stay in place).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from aqrecipe.errors import ConsumerCrashError, EvalError
from aqrecipe.optional import available, require

__all__ = ["LlamaCppBackend"]

WORKER_MODULE = "aqrecipe.evaluate.llamacpp_worker"
STDERR_LINES = 8  # of the worker's stderr quoted in an error


class LlamaCppBackend:
    """Next-token logits and greedy generations from a GGUF file via ``llama_cpp.Llama`` (CPU).

    Each :meth:`logits` call evaluates one window from an empty context; ``n_ctx``
    (and the batch size) bound the window length. :meth:`close` ends the worker.
    """

    def __init__(self, gguf_path: str | os.PathLike[str], n_ctx: int = 512, n_threads: int | None = None):
        if not available("llama_cpp"):
            require("llama_cpp", "evaluating a GGUF file")  # raises DependencyError with the install hint
        self.path = Path(gguf_path)
        self.name = str(self.path)
        self.n_ctx = n_ctx
        from aqrecipe.formats.gguf_read import check_gguf

        check_gguf(self.path)  # llama.cpp would only say "failed to load": name the damage instead
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_worker()
        info = self._call("load", str(self.path), n_ctx, n_threads, doing="loading")
        self.vocab_size: int = info["vocab_size"]
        self.bos_token_id: int | None = info["bos_token_id"]
        self.repack: bool = info["repack"]  # whether llama.cpp may repack weights (off where it uses AMX)
        n_bytes = n_ctx * self.vocab_size * 4
        os.ftruncate(self._buffer.fileno(), n_bytes)
        self._logits = np.memmap(self._buffer, dtype=np.float32, mode="r+", shape=(n_ctx, self.vocab_size))
        self._call("map_buffer", n_bytes, doing="loading")

    def _start_worker(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        # the logits buffer: an unlinked file both processes map; nothing is left behind if either dies
        self._buffer = tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self._stderr = tempfile.TemporaryFile()
        fds = (child_sock.fileno(), self._buffer.fileno())
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, *map(str, fds)],
                pass_fds=fds, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr,
            )
        finally:
            child_sock.close()
        self._conn = Connection(parent_sock.detach())

    def _call(self, op: str, *args: Any, doing: str = "evaluating") -> Any:
        if self._proc is None:
            raise EvalError(f"the llama.cpp backend for {self.name} is closed", hint="open a new backend")
        try:
            self._conn.send((op, args))
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise self._crash(doing) from None
        if status == "error":
            said = self._stderr_tail()  # llama.cpp's own reason (the worker logs its warnings and errors)
            hint = ("the file is a complete GGUF (its header and tensor extents were checked), but llama.cpp "
                    "refuses its contents for the reason above: re-create it with aqrecipe apply or quantize, "
                    "or use a llama-cpp-python whose llama.cpp supports its architecture"
                    if said else "check that the file is a complete GGUF model (aqrecipe inspect FILE) and that "
                    "this llama-cpp-python supports its architecture")
            raise EvalError(value + said, hint=hint)
        return value

    def _crash(self, doing: str) -> ConsumerCrashError:
        proc, self._proc = self._proc, None
        assert proc is not None
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        self._conn.close()
        if code < 0:
            try:
                how = f"signal {-code}, {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        else:
            how = f"exit status {code}"
        hint = "the files already written are kept; rerun with `aqrecipe eval FILE` to retry the evaluation alone"
        if getattr(self, "repack", True):
            hint += "; if llama.cpp crashes on every quantized file, try AQRECIPE_LLAMACPP_REPACK=off (llama.cpp's --no-repack)"
        if code == -signal.SIGKILL:
            hint += "; a SIGKILL is often the kernel's out-of-memory killer: free memory or use a smaller --context"
        return ConsumerCrashError(f"llama.cpp crashed ({how}) while {doing} {self.name}{self._stderr_tail()}", hint=hint)

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode("utf-8", errors="replace").splitlines() if ln.strip()]
        if not lines:
            return ""
        return "\n  llama.cpp said: " + "\n    ".join(lines[-STDERR_LINES:])

    def tokenize(self, text: str) -> list[int]:
        return self._call("tokenize", text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._call("detokenize", list(tokens))

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        n = len(tokens)
        if n > self.n_ctx:
            raise EvalError(
                f"window of {n} tokens exceeds the llama.cpp context of {self.n_ctx}",
                hint="open the backend with a larger n_ctx",
            )
        self._call("logits", [int(t) for t in tokens])
        return np.array(self._logits[:n], dtype=np.float32, copy=True)

    def generate(self, prompt: str, n_tokens: int) -> dict[str, Any]:
        """Greedy continuation: ``{"tokens": [...], "non_finite": bool, "text": str}``."""
        return self._call("generate", prompt, n_tokens, doing="generating with")

    def close(self) -> None:
        """End the worker (and free its model) now rather than at garbage collection."""
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        try:
            self._conn.send(("close", ()))
            self._conn.recv()
        except (EOFError, OSError):
            pass
        self._conn.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._logits = None  # type: ignore[assignment]
        self._buffer.close()
        self._stderr.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
