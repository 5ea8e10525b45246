"""Test-only hooks: SIGKILL or pause this process at a named point of a run.

The crash-safety and lock tests set these environment variables on a child
``aqrecipe`` process; nobody else should. With neither set, :func:`reached`
costs one environment lookup.

``AQRECIPE_TEST_KILL_AT=<phase>:<n>[:<SIGNAL>]``
    SIGKILL (or the named signal, e.g. ``SIGSEGV``, ``SIGABRT``) at the ``n``-th
    (0-based) call of ``reached(phase)``.
``AQRECIPE_TEST_PAUSE_AT=<phase>:<n>`` with ``AQRECIPE_TEST_PAUSE_FILE=<path>``
    at that call, create ``<path>`` (holding the pid) and wait until it is removed.

Phases: ``measure`` (a planner measurement stage file was written), ``pack``
(before packing each tensor, the GGUF partly written), ``publish`` (the output is
complete in the work folder, not yet moved to its destination), ``done`` (the
output is in place; evaluation and the report are next); in the llama.cpp worker
process, ``llamacpp-load``, ``llamacpp-logits`` and ``llamacpp-generate`` (a
consumer crash). Calibration layers use
the runner's own ``AQRECIPE_TEST_KILL_AFTER_STAGE`` / ``..._DURING_STAGE``.
"""

from __future__ import annotations

import os
import signal
import time

KILL_ENV = "AQRECIPE_TEST_KILL_AT"
PAUSE_ENV = "AQRECIPE_TEST_PAUSE_AT"
PAUSE_FILE_ENV = "AQRECIPE_TEST_PAUSE_FILE"
PAUSE_TIMEOUT_S = 300.0  # a forgotten pause must not hang a test run forever

_counts: dict[str, int] = {}


def reached(phase: str) -> None:
    """Count one pass through ``phase``; kill or pause here when the environment asks."""
    kill, pause = os.environ.get(KILL_ENV), os.environ.get(PAUSE_ENV)
    if kill is None and pause is None:
        return
    n = _counts.get(phase, 0)
    _counts[phase] = n + 1
    here = f"{phase}:{n}"
    if kill is not None and (kill == here or kill.startswith(here + ":")):
        name = kill[len(here) + 1 :] or "SIGKILL"
        os.kill(os.getpid(), signal.Signals[name])
    if pause == here:
        _pause(os.environ[PAUSE_FILE_ENV])


def _pause(marker: str) -> None:
    tmp = f"{marker}.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(tmp, marker)  # the test sees the marker only once it is complete
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
