"""Calibration: text windows, a sequential layer-by-layer forward pass with
per-linear observers, numba statistics, and resumable layer-level checkpoints.

Importing this package imports neither torch nor numba; the runner and the
statistics kernel load them on first use.
"""

from __future__ import annotations

from aqrecipe.calibration.data import CalibrationSpec, calibration_windows
from aqrecipe.calibration.observers import DownProjRanges, InputStatsObserver, LinearObserver
from aqrecipe.calibration.stats import ChannelStats

__all__ = [
    "CalibrationSpec",
    "ChannelStats",
    "DownProjRanges",
    "InputStatsObserver",
    "LinearObserver",
    "calibration_windows",
]
