"""Super weights from activation magnitudes (ffn_down max|input| / max|output| per channel).

A super weight ``W[r, c]`` of an early ffn_down turns a large input activation
in channel ``c`` into a huge output spike in channel ``r``. One calibration pass
with the :class:`~aqrecipe.calibration.observers.DownProjRanges` observer gives,
per layer, max|x_c| and max|y_r|. A layer whose max|y| stands out (``spike_ratio``
times the median of the other layers' maxima) points at row ``r = argmax max|y|``;
the column is the one that can explain most of the spike, ``argmax_c |W[r,c]| *
max|x_c|``. The weight is accepted when it is an outlier of its tensor
(``min_weight_z``) and explains at least ``min_share`` of the spike. Found weights
are zeroed and the pass is repeated to uncover the next ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from aqrecipe.importance.config import DetectSpec
from aqrecipe.importance.model import SuperWeight
from aqrecipe.models.tensor_names import layer_of

if TYPE_CHECKING:
    from aqrecipe.calibration.runner import CalibrationResult, RunnerOptions
    from aqrecipe.models.protocol import WeightSource


@dataclass(frozen=True)
class DownRanges:
    """Per layer: max|input| per ffn_down column and max|output| per ffn_down row."""

    max_in: Mapping[int, np.ndarray]
    max_out: Mapping[int, np.ndarray]

    @classmethod
    def from_result(cls, result: CalibrationResult) -> "DownRanges":
        """From a :class:`~aqrecipe.calibration.runner.CalibrationResult`."""
        return cls(dict(result.down_proj_max_in), dict(result.down_proj_max_out))

    def peaks(self) -> dict[int, float]:
        return {layer: float(np.max(v)) for layer, v in sorted(self.max_out.items())}


def spike_ratios(ranges: DownRanges) -> dict[int, float]:
    """Per layer: max|y| over the median of the other layers' max|y| (0 with a single layer)."""
    peaks = ranges.peaks()
    out = {}
    for layer, peak in peaks.items():
        others = [p for k, p in peaks.items() if k != layer]
        med = float(np.median(others)) if others else 0.0
        out[layer] = peak / med if med > 0 else 0.0
    return out


class DownWeights:
    """Reads (and caches) ffn_down weights of a model source, by layer."""

    def __init__(self, source: WeightSource) -> None:
        self.source = source
        self.names = {}
        for t in source.tensors:
            layer = layer_of(t.gguf_name)
            if layer is not None and t.gguf_name.endswith(".ffn_down.weight"):
                self.names[layer] = (t.gguf_name, t.hf_name)
        self._cache: dict[int, np.ndarray] = {}

    def read(self, layer: int) -> np.ndarray:
        if layer not in self._cache:
            self._cache = {layer: np.asarray(self.source.read(self.names[layer][1]), dtype=np.float32)}
        return self._cache[layer]


def weight_z(w: np.ndarray, value: float) -> float:
    std = float(w.std(dtype=np.float64))
    return abs(value - float(w.mean(dtype=np.float64))) / std if std > 0 else 0.0


def scan(ranges: DownRanges, weights: DownWeights, spec: DetectSpec, *,
         known: Sequence[SuperWeight] = (), iteration: int = 0) -> tuple[list[SuperWeight], list[str]]:
    """One detection round: accepted weights (one per spiking layer) and notes on rejected spikes."""
    found: list[SuperWeight] = []
    notes: list[str] = []
    taken = {sw.index for sw in known}
    ratios = spike_ratios(ranges)
    for layer in sorted(ratios, key=lambda k: (-ratios[k], k)):
        if ratios[layer] < spec.spike_ratio or layer not in weights.names:
            continue
        w = weights.read(layer)
        mo, mi = ranges.max_out[layer], ranges.max_in[layer]
        row = int(np.argmax(mo))
        contrib = np.abs(w[row]) * mi
        name, hf = weights.names[layer]
        for c in (c for (t, r, c) in taken if t == name and r == row):
            contrib[c] = -1.0  # already found (and zeroed): look for the next one
        col = int(np.argmax(contrib))
        value = float(w[row, col])
        z = weight_z(w, value)
        share = float(contrib[col] / mo[row]) if mo[row] > 0 else 0.0
        sw = SuperWeight(layer=layer, tensor=name, hf_name=hf, row=row, col=col, value=value,
                         max_out=float(mo[row]), max_in=float(mi[col]), spike_ratio=float(ratios[layer]),
                         weight_z=z, share=share, found_by="activation", iteration=iteration)
        if sw.index in taken:
            continue
        if z >= spec.min_weight_z and share >= spec.min_share:
            found.append(sw)
        else:
            notes.append(f"layer {layer}: output spike x{ratios[layer]:.0f} in row {row}, but no single weight "
                         f"explains it (best {name}[{row},{col}]={value:.4g}: share {share:.2f}, z {z:.1f})")
    return found, notes


Measure = Callable[[Sequence[SuperWeight]], DownRanges]


def detect_by_activation(measure: Measure, weights: DownWeights, spec: DetectSpec, *,
                         first: DownRanges | None = None) -> tuple[list[SuperWeight], list[str], list[DownRanges]]:
    """Iterate: scan, zero what was found, measure again, until nothing new or ``max_count``.

    ``measure(zeroed)`` runs the calibration pass with ``zeroed`` set to 0;
    ``first`` (the ranges of an earlier full calibration run) saves the first pass.
    Returns the weights (first pass's ranges on them), the notes of the last
    round and every round's ranges.
    """
    found: list[SuperWeight] = []
    rounds: list[DownRanges] = []
    notes: list[str] = []
    ranges = first if first is not None else measure(())
    for iteration in range(max(1, spec.max_count)):
        rounds.append(ranges)
        new, notes = scan(ranges, weights, spec, known=found, iteration=iteration)
        new = new[: max(0, spec.max_count - len(found))]
        if not new:
            break
        found += new
        if len(found) >= spec.max_count:
            break
        ranges = measure(found)
    return found, notes, rounds


class ZeroedSource:
    """A model source whose reads return some weights set to 0 (everything else delegated)."""

    def __init__(self, source: WeightSource, zeroed: Sequence[SuperWeight]) -> None:
        self._source = source
        self._zeroed: dict[str, list[tuple[int, int]]] = {}
        for sw in zeroed:
            self._zeroed.setdefault(sw.hf_name, []).append((sw.row, sw.col))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def read(self, hf_name: str) -> np.ndarray:
        a = self._source.read(hf_name)
        if hf_name in self._zeroed:
            a = np.array(a, dtype=np.float32, copy=True)
            for r, c in self._zeroed[hf_name]:
                a[r, c] = 0.0
        return a

    def read_for_gguf(self, name: str) -> np.ndarray:
        """The GGUF tensor as the converter makes it from the zeroed values (its own transforms)."""
        info = self._source.tensor(name)
        if info.hf_name not in self._zeroed:
            return self._source.read_for_gguf(name)
        return self._source.convert_values({info.hf_name: self.read(info.hf_name)})[info.gguf_name]

    def fingerprint(self) -> str:
        blob = repr(sorted(self._zeroed.items())).encode()
        return hashlib.sha256(self._source.fingerprint().encode() + blob).hexdigest()


#: The stage named when the source cannot be run in torch (GGUF input).
DETECTION = "super-weight detection"


def runner_measure(source: WeightSource, windows: np.ndarray, options: RunnerOptions | None = None) -> Measure:
    """A :data:`Measure` that runs the sequential calibration runner on ``windows``."""
    from aqrecipe.calibration.runner import RunnerOptions, run_calibration

    opts = options or RunnerOptions(include_output=False, stats_backend="numpy")  # no numba JIT per pass

    def measure(zeroed: Sequence[SuperWeight]) -> DownRanges:
        src = ZeroedSource(source, zeroed) if zeroed else source
        return DownRanges.from_result(run_calibration(src, windows, options=opts, quiet=True, stage=DETECTION))

    return measure

