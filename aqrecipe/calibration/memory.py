"""Memory limits (``--max-memory``) and the peak resident set size of a run.

``--max-memory`` bounds the process's resident memory as a whole: what the
process holds (measured; for calibration with torch, transformers and numba
loaded, plus a reserve for the modeling code, tokenizer and allocator slack) is
subtracted, the largest step (one decoder layer in float32, or one tensor being
packed) must fit in the rest, and the calibration activation cache gets what is
left after one batch: above that it spills to disk (files in the work folder, read
and written one batch at a time) instead of growing. The batch is made smaller only
when one batch alone would not fit; that changes the statistics' fingerprint.
The planner's KLD probe and evaluation load the whole model and are not bounded.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from aqrecipe.errors import MemoryLimitError

if TYPE_CHECKING:
    from aqrecipe.calibration.data import CalibrationSpec
    from aqrecipe.calibration.runner import RunnerOptions
    from aqrecipe.models.protocol import ModelRef, WeightSource

log = logging.getLogger(__name__)

# K/M/G/T alone are binary (like `docker --memory 4g`); "GB" is decimal, "GiB" binary.
_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgt", 1):
    _UNITS.update({_p: 1024**_i, f"{_p}ib": 1024**_i, f"{_p}b": 1000**_i})
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
FLOAT32 = 4
CALIBRATION_RESERVE = 256 << 20  # modeling code, tokenizer, JIT and allocator slack (measured ~75 MiB on a tiny model)


def parse_memory(text: str) -> int:
    """``"4GiB"`` -> 4294967296; also ``512MiB``, ``8GB``, ``4G``, plain bytes."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise MemoryLimitError(
            f"cannot read memory size {text!r}",
            hint="write a positive size with a unit, e.g. 4GiB, 512MiB or 8GB",
        )
    return int(float(m.group(1)) * _UNITS[unit])


def human(n: float) -> str:
    from aqrecipe.plan import human_bytes

    return human_bytes(n)


def current_rss() -> int:
    """Resident bytes of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()["peak_rss_bytes"]


def calibration_baseline() -> int:
    """Resident bytes the calibration pass starts from: this process with its libraries loaded, plus
    :data:`CALIBRATION_RESERVE`. Imports torch and transformers (the pass needs them anyway)."""
    from aqrecipe.calibration.runner import CALIBRATION
    from aqrecipe.optional import require_torch

    require_torch(CALIBRATION)  # loaded, so that their memory is counted

    try:
        from aqrecipe.calibration import _kernels  # noqa: F401  (numba and its compiler)
    except ImportError:  # numba missing: the numpy statistics backend
        pass
    return current_rss() + CALIBRATION_RESERVE


def peak_rss() -> dict[str, int]:
    """Peak resident bytes of this process and of its finished child processes (getrusage)."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
        "peak_rss_children_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
    }


def largest_step(source: WeightSource) -> tuple[str, int]:
    """The biggest thing one step holds: a decoder layer's weights in float32, or one other
    tensor read in float32 plus its packed copy. Returns (description, bytes)."""
    layers: dict[str, int] = {}
    best = ("nothing", 0)
    for t in source.tensors:
        n = FLOAT32
        for d in t.shape:
            n *= int(d)
        parts = t.gguf_name.split(".")
        if parts[0] == "blk":
            key = f"layer {parts[1]}"
            layers[key] = layers.get(key, 0) + n
        elif 2 * n > best[1]:
            best = (f"tensor {t.gguf_name}", 2 * n)
    for key in sorted(layers):
        if layers[key] > best[1]:
            best = (key, layers[key])
    return best


def check_fits(source: WeightSource, max_memory: int, *, baseline: int | None = None) -> int:
    """Bytes left after the process's current size and the model's largest step.

    Raises :class:`MemoryLimitError` when the largest step cannot fit at all.
    """
    base = current_rss() if baseline is None else baseline
    what, need = largest_step(source)
    free = max_memory - base - need
    if free < 0:
        raise MemoryLimitError(
            f"--max-memory {human(max_memory)} is too small: the process needs about {human(base)} before "
            f"loading weights, and the model's largest step ({what}, float32) needs {human(need)} more",
            hint=f"raise --max-memory to at least {human(base + need)} (more leaves room for the "
            "activation cache), or run on a machine with more memory",
        )
    return free


def calibration_options(options: RunnerOptions, source: WeightSource, *, samples: int, seq_len: int,
                        max_memory: int, baseline: int | None = None) -> RunnerOptions:
    """``options`` (RunnerOptions) sized to ``max_memory``: cache budget, and a smaller batch
    only when one default batch would not fit. Raises :class:`MemoryLimitError`.

    ``baseline`` (bytes the process holds before weights and activations) defaults to
    :func:`calibration_baseline`.
    """
    base = calibration_baseline() if baseline is None else baseline
    free = check_fits(source, max_memory, baseline=base)
    arch = source.arch
    # one sample's activations inside a layer: projections, MLP and attention scores (estimate)
    per_sample = seq_len * FLOAT32 * (8 * arch.hidden + 4 * arch.ffn) + 2 * FLOAT32 * arch.n_head * seq_len**2
    if free < per_sample:
        raise MemoryLimitError(
            f"--max-memory {human(max_memory)} leaves {human(free)} for activations; one calibration "
            f"sample of {seq_len} tokens needs about {human(per_sample)}",
            hint=f"raise --max-memory by {human(per_sample - free)} or more, or use a shorter seq_len",
        )
    per_batch = max(1, options.batch_tokens // seq_len)
    fit = max(1, (free // 2) // per_sample)
    if per_batch > fit:
        log.warning("--max-memory: %d samples per batch instead of %d (the statistics' fingerprint changes)",
                    fit, per_batch)
        per_batch = fit
        options = replace(options, batch_tokens=per_batch * seq_len)
    cache_budget = free - per_batch * per_sample
    cache = samples * seq_len * arch.hidden * FLOAT32
    log.info("--max-memory %s: activation cache %s %s (budget %s)", human(max_memory), human(cache),
             "spills to disk" if cache > cache_budget else "stays in memory", human(cache_budget))
    return replace(options, max_cache_bytes=int(cache_budget))


def limited_options(options: RunnerOptions, model_ref: ModelRef, spec: CalibrationSpec, max_memory: int | None
                    ) -> RunnerOptions:
    """``options`` (RunnerOptions) sized by :func:`calibration_options` for calibrating
    ``model_ref`` with ``spec`` (CalibrationSpec) under ``max_memory``; unchanged without a limit."""
    if max_memory is None:
        return options
    from aqrecipe.calibration.hf_model import as_source

    return calibration_options(options, as_source(model_ref), samples=spec.samples, seq_len=spec.seq_len,
                               max_memory=max_memory)
