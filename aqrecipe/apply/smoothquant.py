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
from typing import Any, Mapping, Sequence

import numpy as np

from aqrecipe.smoothquant.config import SmoothQuantConfig, SmoothQuantError
from aqrecipe.smoothquant.mappings import SmoothGroup, norm_offset, resolve_groups

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
            "groups": list(self.groups),
            "activation_errors": {k: {"rel_mse_before": v[0], "rel_mse_after": v[1]}
                                  for k, v in self.activation_errors.items()},
            "problems": list(self.problems), "quality": self.quality, "calibration": self.calibration,
            "scales_path": self.scales_path, "output": self.output,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def group_statistics(groups: Sequence[SmoothGroup], stats: Mapping[str, Any], source: Any
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


def _require_extras(cfg: SmoothQuantConfig, output: Any) -> None:
    """Fail before calibrating when a package the run needs is missing (the modules under
    :mod:`aqrecipe.smoothquant` import torch and compressed-tensors plainly: they run after this)."""
    from aqrecipe.optional import require, require_torch
    from aqrecipe.output.w8a8 import COMPRESSED_TENSORS

    require_torch("SmoothQuant W8A8")
    dest = output if output is not None else cfg.output_path
    if dest is not None and cfg.output == "compressed-tensors":
        require("compressed_tensors", COMPRESSED_TENSORS)


def run_smoothquant(recipe_section: SmoothQuantConfig | Mapping[str, Any] | None, model_ref: Any,
                    calibration_spec: Any, work_dir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                    *, evaluate: bool = True, eval_chunks: int = 16, eval_context: int = 512,
                    eval_text: str | os.PathLike[str] | None = None, probe_samples: int = 4,
                    quiet: bool = True) -> SmoothQuantResult:
    """Run SmoothQuant W8A8 on ``model_ref`` ("demo", an HF folder or a ModelSource).

    ``calibration_spec`` is a :class:`~aqrecipe.calibration.CalibrationSpec`; the
    calibration checkpoints, the scales file and the JSON report go to ``work_dir``.
    ``output`` overrides the section's ``output.path``.
    """
    from aqrecipe.calibration.data import calibration_windows, load_tokenizer
    from aqrecipe.imatrix.compute import calibrate
    from aqrecipe.models import ModelSource, open_model
    from aqrecipe.smoothquant.analysis import activation_errors, group_report, problem_layers, save_scales, scale_arrays
    from aqrecipe.smoothquant.torch_model import load_float_model, max_relative_logit_diff, mean_nll, window_logits

    cfg = recipe_section if isinstance(recipe_section, SmoothQuantConfig) else SmoothQuantConfig.from_dict(recipe_section)
    _require_extras(cfg, output)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    source = model_ref if isinstance(model_ref, ModelSource) else open_model(model_ref)
    groups = resolve_groups(source, cfg) if cfg.enabled else []
    offset = norm_offset(source.config)
    names = {t_.hf_name.removesuffix(".weight"): t_.gguf_name for t_ in source.tensors}

    calib = calibrate(source, calibration_spec, work / "calibration", quiet=quiet)
    windows = calibration_windows(calibration_spec, load_tokenizer(str(source.tokenizer_dir or source.path)))
    seconds["calibrate"] = time.perf_counter() - t
    act, wmax = group_statistics(groups, calib.stats, source)
    model = load_float_model(source)
    from aqrecipe.smoothquant.fakequant import decoder_linears

    channel_max = {n: calib.stats[names[n]].absmax for n in decoder_linears(model)}
    static = cfg.activations == "static-per-tensor"

    def quantized(alpha: float) -> Any:
        sc = compute_scales(groups, act, wmax, alpha)
        sm = smoothed_copy(model, groups, sc, offset)
        return simulated_w8a8(sm, static_input_scales(channel_max, linear_scales(groups, sc)) if static else None)

    search: list[dict[str, float]] = []
    alpha: float | str | None = None if not cfg.enabled else cfg.alpha
    if cfg.enabled and cfg.is_auto:
        t = time.perf_counter()
        scored = windows[: cfg.auto_samples]
        for a in cfg.alpha_grid:
            search.append({"alpha": a, "calibration_nll": mean_nll(quantized(a), scored)})
            log.info("alpha %.2f: calibration NLL %.5f", a, search[-1]["calibration_nll"])
        alpha = min(search, key=lambda r: (r["calibration_nll"], r["alpha"]))["alpha"]
        seconds["alpha_search"] = time.perf_counter() - t

    scales = compute_scales(groups, act, wmax, float(alpha)) if groups else {}
    smooth = linear_scales(groups, scales)
    smoothed = smoothed_copy(model, groups, scales, offset)
    probe = windows[: max(1, min(probe_samples, len(windows)))]
    rel = max_relative_logit_diff(window_logits(model, probe), window_logits(smoothed, probe))
    if rel > EQUIVALENCE_LIMIT:
        raise SmoothQuantError(f"smoothing changed the float model's logits (max relative difference {rel:.3g})",
                               hint="a smoothing group holds a linear that does not read its norm's output")
    input_scales = static_input_scales(channel_max, smooth) if static else None

    quality = None
    if evaluate:
        from aqrecipe.evaluate import evaluate as run_eval
        from aqrecipe.smoothquant.torch_model import ModuleBackend, load_tokenizer as hf_tokenizer

        t = time.perf_counter()
        tok = hf_tokenizer(source)
        sim = simulated_w8a8(smoothed, input_scales)
        report = run_eval(ModuleBackend(sim, tok, "w8a8-simulated"), reference=ModuleBackend(model, tok, "float32"),
                          text=eval_text, chunks=eval_chunks, context=eval_context)
        quality = report.to_dict()
        del sim
        seconds["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    errors = activation_errors(model, probe, smooth, channel_max if static else None)
    alphas = {lin: (g.alpha if g.alpha is not None else float(alpha)) for g in groups for lin in g.linears}
    problems = problem_layers(errors, names, alphas, cfg.problem_threshold)
    reports = [group_report(g, alphas[g.linears[0]], scales[g.key], act[g.key], wmax[g.key]) for g in groups]
    scales_path = work / "smoothquant_scales.safetensors"
    save_scales(scales_path, scale_arrays(groups, scales, act, wmax),
                {"alpha": alpha, "groups": [g.to_dict() for g in groups], "norm_offset": offset})
    seconds["analyse"] = time.perf_counter() - t

    dest = output if output is not None else cfg.output_path
    if dest is not None and cfg.output != "none":
        t = time.perf_counter()
        from aqrecipe.output.w8a8 import write_compressed_tensors, write_q8_0_gguf

        if cfg.output == "compressed-tensors":
            write_compressed_tensors(smoothed, source, Path(dest), input_scales)
        else:
            write_q8_0_gguf(smoothed, source, Path(dest), work)
        seconds["write"] = time.perf_counter() - t
    result = SmoothQuantResult(
        model=str(source.path), config=cfg.to_dict(), alpha=alpha, alpha_search=tuple(search),
        equivalence_max_rel_logit_diff=rel, groups=tuple(reports),
        activation_errors={names[n]: v for n, v in errors.items()}, problems=tuple(problems), quality=quality,
        calibration={"samples": calib.n_samples, "seq_len": calib.seq_len, "source": calibration_spec.describe()},
        scales_path=str(scales_path), output=str(dest) if dest is not None and cfg.output != "none" else None,
        seconds=seconds)
    from aqrecipe.formats.fileio import atomic_write_text

    atomic_write_text(work / "smoothquant_report.json", json.dumps(result.to_dict(), indent=1, sort_keys=True))
    return result
