"""The planner's guard: measure the plan against the recipe's own types before either is written.

The planner ranks types by a calibrated proxy, one tensor at a time; the errors of many quantized
tensors interact, and a proxy can misrank. So before a plan is used, the plan and the baseline (the
types the recipe gives without the planner: its mixture, with any protection pins) are each set into
the float transformers model, every tensor a probe can swap at once, and their KL divergence from the
float model's logits is measured on held-out calibration windows (drawn with another seed, none of
them a window the measurement used). When the plan measures worse and the baseline fits the budget,
the baseline's types are used, and the caller says so: a plan is never silently worse than not
planning.

Merged experts and split tensors cannot be swapped in the torch model (see
:func:`~aqrecipe.planner.kld.probe_can_swap`); they stay float in both measurements, and the result
says how many tensors were left out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from aqrecipe.planner.proxy import round_trip

if TYPE_CHECKING:
    from aqrecipe.imatrix.protocol import Importance
    from aqrecipe.models.protocol import WeightSource
    from aqrecipe.planner.config import MeasurementSpec
    from aqrecipe.planner.kld import KldProbe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Validation:
    """Measured KLD of the plan and of the baseline on the same held-out windows."""

    plan_kld: float
    baseline_kld: float
    baseline: str  # what the baseline is ("Q4_K_M mixture")
    windows: int
    seq_len: int
    swapped_tensors: int  # tensors set to their type in both models
    float_tensors: int  # tensors a probe cannot swap, left float in both
    seconds: float
    shipped: str  # "plan" or "baseline"

    @property
    def plan_is_worse(self) -> bool:
        return self.plan_kld > self.baseline_kld

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.plan_kld / self.baseline_kld if self.baseline_kld > 0 else None}


def held_out_windows(source: WeightSource, spec: MeasurementSpec) -> np.ndarray:
    """``spec.samples`` calibration windows, none of them one of the measurement's own windows."""
    from aqrecipe.planner.kld import calibration_token_windows

    used = {w.tobytes() for w in calibration_token_windows(source, spec.samples, spec.seq_len, spec.seed)}
    drawn = calibration_token_windows(source, 2 * spec.samples, spec.seq_len, spec.seed + 1)
    fresh = [w for w in drawn if w.tobytes() not in used][: spec.samples]
    return np.stack(fresh)


def _set_types(probe: KldProbe, source: WeightSource, imatrix: Importance | None,
               types: Mapping[str, str], previous: Mapping[str, str] | None) -> None:
    """Set every swappable tensor of ``types`` to its round trip (skipping those already set so)."""
    from aqrecipe.planner.kld import hf_weight_of

    for name, type_name in types.items():
        if previous is not None and previous.get(name) == type_name:
            continue
        hf_name, w = hf_weight_of(source, name)
        imp = imatrix.importance(name) if imatrix is not None else None
        probe.set_weight(hf_name, round_trip(w, type_name, imp))


def validate_plan(source: WeightSource, imatrix: Importance | None, planned: Mapping[str, str],
                  baseline: Mapping[str, str], baseline_label: str, spec: MeasurementSpec, *,
                  n_threads: int | None = None) -> Validation:
    """Measure ``planned`` and ``baseline`` (gguf name -> type, the same tensors) on held-out windows."""
    from aqrecipe.planner.kld import KldProbe, probe_can_swap

    if set(planned) != set(baseline):
        raise ValueError("the plan and the baseline must type the same tensors")
    t0 = time.perf_counter()
    swappable = [n for n in planned if probe_can_swap(source, n)]
    windows = held_out_windows(source, spec)
    probe = KldProbe(source, windows, n_threads=n_threads)
    plan_types = {n: planned[n] for n in swappable}
    base_types = {n: baseline[n] for n in swappable}
    _set_types(probe, source, imatrix, plan_types, None)
    plan_kld = probe.current_kld()
    _set_types(probe, source, imatrix, base_types, plan_types)
    baseline_kld = probe.current_kld()
    result = Validation(plan_kld=plan_kld, baseline_kld=baseline_kld, baseline=baseline_label,
                        windows=int(windows.shape[0]), seq_len=int(windows.shape[1]),
                        swapped_tensors=len(swappable), float_tensors=len(planned) - len(swappable),
                        seconds=round(time.perf_counter() - t0, 3),
                        shipped="baseline" if plan_kld > baseline_kld else "plan")
    log.info("planner validation: plan KLD %.5g, %s %.5g on %d x %d held-out tokens (%d tensors swapped, "
             "%d left float, %.1f s)", plan_kld, baseline_label, baseline_kld, result.windows, result.seq_len,
             result.swapped_tensors, result.float_tensors, result.seconds)
    return result
