"""SIGTERM takes Ctrl-C's path: the run unwinds through its cleanup instead of dying where it stands.

Without a handler, SIGTERM (``kill PID``, ``timeout``, ``docker stop``, systemd,
a CI job cancelled) ends the process at once: apply's staging file and the work
folder's lock stay in ``.aqrecipe-work/`` until the next run. Ctrl-C instead
raises :class:`KeyboardInterrupt`, and every cleanup on the way out (the atomic
writers' ``except BaseException``, the staging folder, the lock's tidy-up) runs.
:func:`sigterm_as_interrupt` makes SIGTERM raise :class:`Terminated`, a
``KeyboardInterrupt``, so the same code runs for both; the CLI exits with
:data:`EXIT_TERMINATED` (143 = 128 + SIGTERM, what a shell reports for a process
a SIGTERM ended, so a supervisor still sees why the run stopped).

Python runs signal handlers in the main thread between bytecodes: a SIGTERM that
arrives inside a long C call (one tensor's packing, one torch layer) takes effect
when it returns. A second SIGTERM while the first unwinds is ignored, so cleanup
is not cut short; SIGKILL still ends the process at once (and the kill -9 tests
show what that leaves).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated`; the previous handler is restored after.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            return  # already unwinding: let the cleanup finish
        raised = True
        raise Terminated(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # None: a handler installed outside Python, which cannot be put back; the default is the closest
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
