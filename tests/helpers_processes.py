"""Waiting for a child aqrecipe process to reach a test pause point (test-only)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest


def wait_for_pause(proc: subprocess.Popen, marker: Path, what: str = "the run", timeout: float = 300.0) -> None:
    """Block until ``marker`` exists (the child paused there); fail the test if the child ends or never gets there."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"{what} ended (rc {proc.returncode}) before its pause: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} never reached its pause point")
        time.sleep(0.05)
