"""``run_smoothquant``: calibrate -> choose alpha -> smooth -> check equivalence -> simulate W8A8
-> evaluate -> report -> write (compressed-tensors or Q8_0 GGUF)."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from aqrecipe.smoothquant.config import SmoothQuantConfig, SmoothQuantError
from aqrecipe.smoothquant.mappings import SmoothGroup, norm_offset, resolve_groups

if TYPE_CHECKING:
    from aqrecipe.calibration.data import CalibrationSpec
    from aqrecipe.calibration.runner import CalibrationResult
    from aqrecipe.calibration.stats import ChannelStats
    from aqrecipe.models.protocol import WeightSource
    from aqrecipe.smoothquant.graph import SkippedGroup

log = logging.getLogger(__name__)

#: Smoothing must leave the float model's logits unchanged up to rounding.
EQUIVALENCE_LIMIT = 1e-3


@dataclass(frozen=True)
class SmoothQuantResult:
    """What a SmoothQuant run measured and wrote (JSON via :meth:`to_dict`)."""

    model: str
    config: dict[str, Any]
    alpha: float | str | None  # the global alpha used (None: smoothing disabled)
    alpha_search: tuple[dict[str, float], ...]
    equivalence_max_rel_logit_diff: float
    groups: tuple[dict[str, Any], ...]
    skipped_groups: tuple[dict[str, Any], ...]  # groups smoothing would not leave equivalent, with the reason
    activation_errors: dict[str, tuple[float, float]]
    problems: tuple[dict[str, Any], ...]
    quality: dict[str, Any] | None
    calibration: dict[str, Any]
    scales_path: str | None
    output: str | None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "config": self.config, "alpha": self.alpha,
            "alpha_search": list(self.alpha_search),
            "equivalence_max_rel_logit_diff": self.equivalence_max_rel_logit_diff,
            "groups": list(self.groups), "skipped_groups": list(self.skipped_groups),
            "activation_errors": {k: {"rel_mse_before": v[0], "rel_mse_after": v[1]}
                                  for k, v in self.activation_errors.items()},
            "problems": list(self.problems), "quality": self.quality, "calibration": self.calibration,
            "scales_path": self.scales_path, "output": self.output,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def group_statistics(groups: Sequence[SmoothGroup], stats: Mapping[str, ChannelStats], source: WeightSource
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per group: max |X_j| of the norm output (from the calibration observers) and max |W_j|."""
    from aqrecipe.smoothquant.scales import weight_column_max

    act, wmax = {}, {}
    for g in groups:
        first = stats.get(g.linears_gguf[0])
        if first is None:
            raise SmoothQuantError(f"no calibration statistics for {g.linears_gguf[0]}",
                                   hint="the calibration run must observe every decoder linear")
        for other in g.linears_gguf[1:]:
            if not np.array_equal(stats[other].absmax, first.absmax):
                raise SmoothQuantError(f"{other} and {g.linears_gguf[0]} do not read the same input, "
                                       f"so {g.norm} cannot smooth both",
                                       hint="put only linears fed by the norm's output in one group")
        act[g.key] = np.asarray(first.absmax, dtype=np.float32)
        wmax[g.key] = weight_column_max([source.read(n + ".weight") for n in g.linears])
        if act[g.key].shape != wmax[g.key].shape:
            raise SmoothQuantError(f"{g.norm}: {act[g.key].shape[0]} channels but linears read "
                                   f"{wmax[g.key].shape[0]}", hint="check the explicit mapping")
    return act, wmax


def compute_scales(groups: Sequence[SmoothGroup], act: Mapping[str, np.ndarray],
                   wmax: Mapping[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    from aqrecipe.smoothquant.scales import smoothing_scales

    return {g.key: smoothing_scales(act[g.key], wmax[g.key], g.alpha if g.alpha is not None else alpha)
            for g in groups}


def linear_scales(groups: Sequence[SmoothGroup], scales: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Module name of each smoothed linear -> its group's ``s``."""
    return {lin: scales[g.key] for g in groups for lin in g.linears}


def static_input_scales(channel_max: Mapping[str, np.ndarray], smooth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-tensor input scale of every decoder linear: max over channels of max|X_j| / s_j, / 127."""
    from aqrecipe.smoothquant.fakequant import static_input_scale

    out = {}
    for name, ch in channel_max.items():
        c = np.asarray(ch, dtype=np.float64)
        if name in smooth:
            c = c / np.asarray(smooth[name], dtype=np.float64)
        out[name] = static_input_scale(float(c.max()))
    return out


def smoothed_copy(model: Any, groups: Sequence[SmoothGroup], scales: Mapping[str, np.ndarray], offset: float) -> Any:
    from aqrecipe.smoothquant.scales import apply_smoothing

    smoothed = copy.deepcopy(model)
    apply_smoothing(smoothed, groups, scales, offset)
    return smoothed


def simulated_w8a8(model: Any, input_scales: Mapping[str, float] | None) -> Any:
    from aqrecipe.smoothquant.fakequant import quantize_model_

    return quantize_model_(copy.deepcopy(model), input_scales)


def _require_extras(cfg: SmoothQuantConfig, output: str | os.PathLike[str] | None) -> None:
    """Fail before calibrating when a package the run needs is missing (the modules under
    :mod:`aqrecipe.smoothquant` import torch and compressed-tensors plainly: they run after this)."""
    from aqrecipe.optional import require, require_torch
    from aqrecipe.output.w8a8 import COMPRESSED_TENSORS

    require_torch("SmoothQuant W8A8")
    dest = output if output is not None else cfg.output_path
    if dest is not None and cfg.output == "compressed-tensors":
        require("compressed_tensors", COMPRESSED_TENSORS)


@dataclass(frozen=True)
class _Calibrated:
    """The float model and what calibration measured on it: everything the smoothing steps read."""

    cfg: SmoothQuantConfig
    source: WeightSource
    groups: list[SmoothGroup]  # the groups that are equivalences on the model's graph
    skipped: list[SkippedGroup]  # the others, with the reason
    offset: float  # the norms' weight offset (1.0 for Gemma-style norms)
    names: dict[str, str]  # decoder linear module name -> the (first) llama.cpp tensor it feeds
    calib: CalibrationResult
    windows: np.ndarray  # the calibration windows
    act: dict[str, np.ndarray]  # group key -> max |X_j|
    wmax: dict[str, np.ndarray]  # group key -> max |W_j|
    model: Any  # the float torch model (no torch import here)
    channel_max: dict[str, np.ndarray]  # decoder linear -> max |X_j| of its input

    @property
    def static(self) -> bool:
        return self.cfg.activations == "static-per-tensor"

    def quantized(self, alpha: float) -> Any:
        """The simulated W8A8 model smoothed with ``alpha``."""
        sc = compute_scales(self.groups, self.act, self.wmax, alpha)
        sm = smoothed_copy(self.model, self.groups, sc, self.offset)
        return simulated_w8a8(sm, static_input_scales(self.channel_max, linear_scales(self.groups, sc))
                              if self.static else None)


def run_smoothquant(recipe_section: SmoothQuantConfig | Mapping[str, Any] | None,
                    model_ref: str | os.PathLike[str] | WeightSource,
                    calibration_spec: CalibrationSpec, work_dir: str | os.PathLike[str],
                    output: str | os.PathLike[str] | None = None,
                    *, evaluate: bool = True, eval_chunks: int = 16, eval_context: int = 512,
                    eval_text: str | os.PathLike[str] | None = None, probe_samples: int = 4,
                    quiet: bool = True) -> SmoothQuantResult:
    """Run SmoothQuant W8A8 on ``model_ref`` ("demo", an HF folder or a ModelSource).

    ``calibration_spec`` is a :class:`~aqrecipe.calibration.CalibrationSpec`; the
    calibration checkpoints, the scales file and the JSON report go to ``work_dir``.
    ``output`` overrides the section's ``output.path``.
    """
    from aqrecipe.formats.fileio import atomic_write_text

    cfg = recipe_section if isinstance(recipe_section, SmoothQuantConfig) else SmoothQuantConfig.from_dict(recipe_section)
    _require_extras(cfg, output)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    c = _calibrate(cfg, model_ref, calibration_spec, work, quiet, seconds)
    alpha, search = _choose_alpha(c, seconds)
    scales, smoothed, probe, rel = _smooth_checked(c, alpha, probe_samples)
    smooth = linear_scales(c.groups, scales)
    input_scales = static_input_scales(c.channel_max, smooth) if c.static else None
    quality = (_evaluate_w8a8(c, smoothed, input_scales, eval_text, eval_chunks, eval_context, seconds)
               if evaluate else None)
    errors, problems, reports, scales_path = _analyse(c, alpha, scales, smooth, probe, work, seconds)
    written = _write(c, smoothed, input_scales, output if output is not None else cfg.output_path, work, seconds)
    result = SmoothQuantResult(
        model=str(c.source.path), config=cfg.to_dict(), alpha=alpha, alpha_search=tuple(search),
        equivalence_max_rel_logit_diff=rel, groups=tuple(reports),
        skipped_groups=tuple(g.to_dict() for g in c.skipped),
        activation_errors={c.names[n]: v for n, v in errors.items()}, problems=tuple(problems), quality=quality,
        calibration={"samples": c.calib.n_samples, "seq_len": c.calib.seq_len,
                     "source": calibration_spec.describe()},
        scales_path=str(scales_path), output=written, seconds=seconds)
    atomic_write_text(work / "smoothquant_report.json", json.dumps(result.to_dict(), indent=1, sort_keys=True))
    return result


def _calibrate(cfg: SmoothQuantConfig, model_ref: str | os.PathLike[str] | WeightSource,
               calibration_spec: CalibrationSpec, work: Path, quiet: bool, seconds: dict[str, float]) -> _Calibrated:
    """Open the model, resolve the smoothing groups and check them on its graph, calibrate."""
    from aqrecipe.calibration.data import calibration_windows, load_tokenizer
    from aqrecipe.calibration.hf_model import as_source, require_hf_folder
    from aqrecipe.imatrix.compute import calibrate
    from aqrecipe.smoothquant.fakequant import decoder_linears
    from aqrecipe.smoothquant.graph import check_groups
    from aqrecipe.smoothquant.torch_model import SMOOTHQUANT, load_float_model

    t = time.perf_counter()
    source = as_source(model_ref)
    require_hf_folder(source, SMOOTHQUANT)
    offset = norm_offset(source.config)
    model = load_float_model(source)
    groups, skipped = [], []
    if cfg.enabled:
        probe = (np.arange(1, 9, dtype=np.int64) % max(2, int(model.config.vocab_size)))[None, :]
        groups, skipped = check_groups(model, resolve_groups(source, cfg), offset, probe)
        for g in skipped:
            log.warning("SmoothQuant: %s not smoothed: %s", g.group, g.reason)

    calib = calibrate(source, calibration_spec, work / "calibration", quiet=quiet, stage=SMOOTHQUANT)
    windows = calibration_windows(calibration_spec, load_tokenizer(str(source.tokenizer_dir or source.path)))
    seconds["calibrate"] = time.perf_counter() - t
    act, wmax = group_statistics(groups, calib.stats, source)
    names = {n: feeds[0] for n in decoder_linears(model) if (feeds := source.gguf_names_of(n + ".weight"))}
    channel_max = {n: calib.stats[g].absmax for n, g in names.items()}
    return _Calibrated(cfg, source, groups, skipped, offset, names, calib, windows, act, wmax, model, channel_max)


def _choose_alpha(c: _Calibrated, seconds: dict[str, float]) -> tuple[float | str | None, list[dict[str, float]]]:
    """The global alpha (None: smoothing disabled) and, for ``alpha: auto``, the grid search's rows."""
    from aqrecipe.smoothquant.torch_model import mean_nll

    cfg = c.cfg
    search: list[dict[str, float]] = []
    alpha: float | str | None = None if not cfg.enabled else cfg.alpha
    if cfg.enabled and cfg.is_auto:
        t = time.perf_counter()
        scored = c.windows[: cfg.auto_samples]
        for a in cfg.alpha_grid:
            search.append({"alpha": a, "calibration_nll": mean_nll(c.quantized(a), scored)})
            log.info("alpha %.2f: calibration NLL %.5f", a, search[-1]["calibration_nll"])
        alpha = min(search, key=lambda r: (r["calibration_nll"], r["alpha"]))["alpha"]
        seconds["alpha_search"] = time.perf_counter() - t
    return alpha, search


def _smooth_checked(c: _Calibrated, alpha: float | str | None, probe_samples: int
                    ) -> tuple[dict[str, np.ndarray], Any, np.ndarray, float]:
    """The scales, the smoothed float model, the probe windows and the logit difference smoothing made
    (raises when smoothing changed the float model's logits)."""
    from aqrecipe.smoothquant.torch_model import max_relative_logit_diff, window_logits

    scales = compute_scales(c.groups, c.act, c.wmax, float(alpha)) if c.groups else {}  # type: ignore[arg-type]
    smoothed = smoothed_copy(c.model, c.groups, scales, c.offset)
    probe = c.windows[: max(1, min(probe_samples, len(c.windows)))]
    rel = max_relative_logit_diff(window_logits(c.model, probe), window_logits(smoothed, probe))
    if rel > EQUIVALENCE_LIMIT:
        raise SmoothQuantError(f"smoothing changed the float model's logits (max relative difference {rel:.3g})",
                               hint="a smoothing group holds a linear that does not read its norm's output")
    return scales, smoothed, probe, rel


def _evaluate_w8a8(c: _Calibrated, smoothed: Any, input_scales: Mapping[str, float] | None,
                   eval_text: str | os.PathLike[str] | None, eval_chunks: int, eval_context: int,
                   seconds: dict[str, float]) -> dict[str, Any]:
    """PPL / KLD / top-1 of the simulated W8A8 model against the float one."""
    from aqrecipe.evaluate import evaluate as run_eval
    from aqrecipe.smoothquant.torch_model import ModuleBackend, load_tokenizer as hf_tokenizer

    t = time.perf_counter()
    tok = hf_tokenizer(c.source)
    sim = simulated_w8a8(smoothed, input_scales)
    report = run_eval(ModuleBackend(sim, tok, "w8a8-simulated"), reference=ModuleBackend(c.model, tok, "float32"),
                      text=eval_text, chunks=eval_chunks, context=eval_context)
    quality = report.to_dict()
    del sim
    seconds["evaluate"] = time.perf_counter() - t
    return quality


def _analyse(c: _Calibrated, alpha: float | str | None, scales: Mapping[str, np.ndarray],
             smooth: Mapping[str, np.ndarray], probe: np.ndarray, work: Path, seconds: dict[str, float]
             ) -> tuple[dict[str, tuple[float, float]], list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Activation errors, problem layers and per-group reports; the scales file saved to ``work``."""
    from aqrecipe.smoothquant.analysis import activation_errors, group_report, problem_layers, save_scales, scale_arrays

    t = time.perf_counter()
    groups = c.groups
    errors = activation_errors(c.model, probe, smooth, c.channel_max if c.static else None)
    alphas = {lin: (g.alpha if g.alpha is not None else float(alpha)) for g in groups  # type: ignore[arg-type]
              for lin in g.linears}
    problems = problem_layers(errors, c.names, alphas, c.cfg.problem_threshold)
    reports = [group_report(g, alphas[g.linears[0]], scales[g.key], c.act[g.key], c.wmax[g.key]) for g in groups]
    scales_path = work / "smoothquant_scales.safetensors"
    save_scales(scales_path, scale_arrays(groups, scales, c.act, c.wmax),
                {"alpha": alpha, "groups": [g.to_dict() for g in groups], "norm_offset": c.offset})
    seconds["analyse"] = time.perf_counter() - t
    return errors, problems, reports, scales_path


def _write(c: _Calibrated, smoothed: Any, input_scales: Mapping[str, float] | None,
           dest: str | os.PathLike[str] | None, work: Path, seconds: dict[str, float]) -> str | None:
    """Write the W8A8 model (compressed-tensors or Q8_0 GGUF); returns where, or None."""
    if dest is None or c.cfg.output == "none":
        return None
    t = time.perf_counter()
    from aqrecipe.output.w8a8 import write_compressed_tensors, write_q8_0_gguf

    if c.cfg.output == "compressed-tensors":
        write_compressed_tensors(smoothed, c.source, Path(dest), input_scales)
    else:
        write_q8_0_gguf(smoothed, c.source, Path(dest), c.groups)
    seconds["write"] = time.perf_counter() - t
    return str(dest)
