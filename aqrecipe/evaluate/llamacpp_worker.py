"""The child process that holds a llama.cpp model, so that a crash in llama.cpp cannot end aqrecipe.

Started by :class:`aqrecipe.evaluate.llamacpp.LlamaCppBackend` as
``python -m aqrecipe.evaluate.llamacpp_worker SOCKET_FD BUFFER_FD``. Requests
arrive on the socket as ``(operation, arguments)`` tuples and each gets one
reply, ``("ok", value)`` or ``("error", message)``. Logits do not travel through
the socket: they are written into the shared buffer file (an unlinked file both
processes map), and the reply carries only their shape.

This is also the one place that opens ``llama_cpp.Llama`` for aqrecipe, with the
CPU remedy below.

Weight repacking (llama.cpp's "extra buffer types") is turned off where this
build of llama.cpp uses AMX: its AMX repack path segfaults on every quantized
file on Intel Xeons with AMX (llama.cpp issue #20824); llama.cpp's own
``--no-repack`` does the same. ``AQRECIPE_LLAMACPP_REPACK=on|off|auto``
overrides the choice (auto: off exactly when llama.cpp reports ``AMX_INT8 = 1``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from aqrecipe._testhooks import reached

REPACK_ENV = "AQRECIPE_LLAMACPP_REPACK"
SEED = 1234  # fixed; evaluation does not sample, but the context wants a seed


def system_info(llama_cpp: Any) -> str:
    """llama.cpp's system line (``AVX2 = 1 | ... | AMX_INT8 = 1 | ...``): the features this build uses."""
    llama_cpp.llama_backend_init()
    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")


def repack_enabled(llama_cpp: Any) -> bool:
    """Whether llama.cpp may repack weights into its extra buffer types (see the module docstring)."""
    setting = os.environ.get(REPACK_ENV, "auto").strip().lower()
    if setting in ("on", "1", "true", "yes"):
        return True
    if setting in ("off", "0", "false", "no"):
        return False
    return "AMX_INT8 = 1" not in system_info(llama_cpp)


@contextlib.contextmanager
def _model_params(llama_cpp: Any, **fields: Any) -> Iterator[None]:
    """Make ``llama_model_default_params()`` return params with ``fields`` set while a model loads.

    ``llama_cpp.Llama`` builds its model params from that function and offers no
    argument for ``use_extra_bufts``; this process loads one model at a time.
    """
    low = llama_cpp.llama_cpp
    original = low.llama_model_default_params

    def patched() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    low.llama_model_default_params = patched
    try:
        yield
    finally:
        low.llama_model_default_params = original


class LlamaLog:
    """llama.cpp's warnings and errors, written to this process's original stderr.

    llama-cpp-python with ``verbose=False`` points the process's stderr at
    /dev/null while a model loads, so the reason a file does not load ("missing
    tensor 'output_norm.weight'", "unknown model architecture") never reached the
    parent, whose message was only "Failed to load model from file". This log
    callback writes every warning and error line to a copy of the stderr the
    parent captures (it quotes the last lines in its error, after a crash too);
    information and debug lines are dropped, as before.
    """

    WARN, ERROR, CONT = 3, 4, 5  # ggml.h's ggml_log_level (llama-cpp-python's _logger.py has the old numbers)
    MAX_LINE = 4096  # characters of one line kept (a line without a newline cannot grow the buffer)

    def __init__(self) -> None:
        self._fd = os.dup(2)  # survives the /dev/null redirection of fd 2
        self._keeping = False
        self._partial = ""
        self._callback: Any = None  # the ctypes callback must live as long as llama.cpp may call it

    def install(self, llama_cpp: Any) -> None:
        """Make this the log callback of ``llama_cpp`` (replacing llama-cpp-python's)."""
        import ctypes

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: Any) -> None:
            self.record(level, text)

        self._callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def record(self, level: int, text: bytes | None) -> None:
        """Keep a warning or error (and its continuations); write each completed line."""
        self._keeping = self._keeping if level == self.CONT else level in (self.WARN, self.ERROR)
        if not self._keeping or not text:
            return
        self._partial = (self._partial + text.decode("utf-8", errors="replace"))[-self.MAX_LINE:]
        *lines, self._partial = self._partial.split("\n")
        done = "".join(f"{line.rstrip()}\n" for line in lines if line.strip())
        if done:
            try:
                os.write(self._fd, done.encode("utf-8"))
            except OSError:  # the parent went away: nothing to tell
                pass


_LOG: LlamaLog | None = None


def open_llama(path: str, **kwargs: Any) -> Any:
    """``llama_cpp.Llama(model_path=path, **kwargs)`` with repacking off where it would crash.

    Call it only in a process that may die: a llama.cpp crash is not an exception.
    llama.cpp's warnings and errors go to this process's stderr (:class:`LlamaLog`).
    """
    import llama_cpp

    global _LOG
    if _LOG is None:
        _LOG = LlamaLog()
        _LOG.install(llama_cpp)

    if repack_enabled(llama_cpp):
        return llama_cpp.Llama(model_path=path, **kwargs)
    with _model_params(llama_cpp, use_extra_bufts=False):
        return llama_cpp.Llama(model_path=path, **kwargs)


class Worker:
    """One loaded model and the operations the parent may ask for."""

    def __init__(self, buffer_fd: int) -> None:
        self.buffer_fd = buffer_fd
        self.llm: Any = None
        self.logits_view: np.ndarray | None = None

    def load(self, path: str, n_ctx: int, n_threads: int | None) -> dict[str, Any]:
        reached("llamacpp-load")
        try:
            self.llm = open_llama(
                path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads, logits_all=True, seed=SEED, verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise _Reply(f"llama.cpp could not load {path}: {exc}") from exc
        bos = int(self.llm.token_bos())
        probe = self.llm.tokenize(b"a", add_bos=True, special=False)
        return {
            "vocab_size": int(self.llm.n_vocab()),
            "bos_token_id": bos if bos >= 0 and probe and probe[0] == bos else None,
            "repack": bool(self.llm.model_params.use_extra_bufts),  # what llama.cpp was given
        }

    def map_buffer(self, n_bytes: int) -> None:
        """Map the shared logits buffer the parent sized for ``n_ctx x vocab`` float32."""
        mem = mmap.mmap(self.buffer_fd, n_bytes)
        self.logits_view = np.frombuffer(mem, dtype=np.float32).reshape(-1, int(self.llm.n_vocab()))

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="replace")

    def logits(self, tokens: list[int]) -> tuple[int, int]:
        """Evaluate one window from an empty context; its logits go into the shared buffer."""
        reached("llamacpp-logits")
        assert self.logits_view is not None, "map_buffer first"
        n = len(tokens)
        self.llm.reset()
        self.llm.eval(tokens)
        self.logits_view[:n] = self.llm.scores[:n]
        return n, self.logits_view.shape[1]

    def generate(self, prompt: str, n_tokens: int) -> dict[str, Any]:
        """Greedy continuation of ``prompt``; stops at EOS or at non-finite logits."""
        reached("llamacpp-generate")
        llm = self.llm
        llm.reset()
        llm.eval(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
        out: list[int] = []
        non_finite = False
        for _ in range(n_tokens):
            row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            if not np.all(np.isfinite(row)):
                non_finite = True
                break
            nxt = int(np.argmax(row))
            if nxt == llm.token_eos():
                break
            out.append(nxt)
            llm.eval([nxt])
        return {"tokens": out, "non_finite": non_finite, "text": self.detokenize(out)}


class _Reply(Exception):
    """An error the parent gets as a message (the child goes on serving)."""


def serve(conn: Connection, worker: Worker) -> None:
    """Answer requests until the parent sends ``close`` or goes away."""
    operations = {
        "load": worker.load, "map_buffer": worker.map_buffer, "tokenize": worker.tokenize,
        "detokenize": worker.detokenize, "logits": worker.logits, "generate": worker.generate,
    }
    while True:
        try:
            op, args = conn.recv()
        except EOFError:
            return
        if op == "close":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", operations[op](*args)))
        except _Reply as exc:
            conn.send(("error", str(exc)))
        except Exception as exc:  # reported to the parent with its type; the parent raises EvalError
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[0]))
    try:
        serve(conn, Worker(int(argv[1])))
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
