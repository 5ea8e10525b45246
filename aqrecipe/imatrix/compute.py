"""compute_imatrix: calibration text -> sequential forward pass -> ImatrixData."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from aqrecipe.calibration.checkpoint import WorkDir, sha256_json
from aqrecipe.calibration.data import CalibrationSpec, calibration_windows, load_tokenizer
from aqrecipe.calibration.observers import LinearObserver
from aqrecipe.calibration.runner import (CALIBRATION, IMATRIX_STAGE, CalibrationResult, RunnerOptions,
                                         run_calibration)
from aqrecipe.errors import CalibrationDataError
from aqrecipe.imatrix.data import ImatrixData
from aqrecipe.optional import require_torch

if TYPE_CHECKING:
    import numpy as np

    from aqrecipe.models.protocol import ModelRef, WeightSource

log = logging.getLogger(__name__)


def tool_version() -> str:
    """aqrecipe + the libraries whose arithmetic shapes the statistics' bits."""
    import numpy

    torch, transformers = require_torch(CALIBRATION)

    from aqrecipe import __version__

    return f"aqrecipe {__version__}; torch {torch.__version__}; transformers {transformers.__version__}; " \
           f"numpy {numpy.__version__}"


def run_components(source: WeightSource, spec: CalibrationSpec, windows: np.ndarray, options: RunnerOptions,
                   observers: Sequence[LinearObserver] = ()) -> dict[str, str]:
    """The fingerprint components of a calibration run (see checkpoint.fingerprint)."""
    from aqrecipe.models.files import values_key

    data = hashlib.sha256(sha256_json(spec.to_dict()).encode())
    data.update(windows.tobytes())
    return {
        "model": values_key(source),  # structure and values: a fine-tune never resumes its base's run
        "calibration": data.hexdigest(),
        "options": sha256_json({"runner": options.result_relevant(),
                                "observers": sorted(o.key for o in observers)}),
        "version": hashlib.sha256(tool_version().encode()).hexdigest(),
    }


def calibrate(model_ref: ModelRef, spec: CalibrationSpec = CalibrationSpec(),
              work_dir: str | os.PathLike[str] | None = None, *, restart: bool = False,
              options: RunnerOptions = RunnerOptions(), observers: Sequence[LinearObserver] = (),
              quiet: bool = False, base_dir: Path | None = None, stage: str = IMATRIX_STAGE) -> CalibrationResult:
    """Run the calibration pass (resumable when ``work_dir`` is given); ``stage`` names the caller in errors."""
    from aqrecipe.calibration.hf_model import as_source, require_hf_folder

    require_torch(CALIBRATION)  # before the tokenizer and the corpus: the pass cannot run without them
    source = as_source(model_ref, base_dir)
    require_hf_folder(source, stage)  # GGUF input: say so before tokenizing anything
    if source.tokenizer_dir is None:
        raise CalibrationDataError(
            f"model {source.path} has no tokenizer files (tokenizer.json / tokenizer.model)",
            hint="calibration tokenizes text with the model's own tokenizer; add its tokenizer files",
        )
    windows = calibration_windows(spec, load_tokenizer(str(source.tokenizer_dir)))
    if spec.all_experts:
        from dataclasses import replace

        options = replace(options, all_experts=True)
    log.info("calibration: %d samples x %d tokens from %s", spec.samples, spec.seq_len, spec.describe())
    if work_dir is None:
        return run_calibration(source, windows, options=options, observers=observers, quiet=quiet, stage=stage)
    components = run_components(source, spec, windows, options, observers)
    with WorkDir(work_dir, components, n_stages=source.arch.n_layers + 1, restart=restart) as work:
        return run_calibration(source, windows, options=options, work=work, observers=observers, quiet=quiet,
                               stage=stage)


def compute_imatrix(model_ref: ModelRef, spec: CalibrationSpec = CalibrationSpec(),
                    work_dir: str | os.PathLike[str] | None = None, *, output: str | os.PathLike[str] | None = None,
                    restart: bool = False, options: RunnerOptions = RunnerOptions(),
                    quiet: bool = False, base_dir: Path | None = None,
                    observers: Sequence[LinearObserver] = ()) -> ImatrixData:
    """The importance matrix of ``model_ref`` ("demo", a folder or a ModelSource).

    With ``work_dir`` the run checkpoints after every layer and resumes a killed
    run (same fingerprint) to the same bytes. ``output`` (.gguf or .dat) is
    written atomically when given. ``observers`` ride the same pass (e.g. GPTQ's Hessians).
    """
    from aqrecipe.calibration.hf_model import as_source
    from aqrecipe.imatrix.check import repeat_per_matrix

    source = as_source(model_ref, base_dir)
    result = calibrate(source, spec, work_dir, restart=restart, options=options,
                       quiet=quiet, observers=observers)
    data = imatrix_from_result(result, spec)
    repeat_per_matrix(data, source)
    if data.unseen_experts:
        log.info("%d expert slices in %d tensors received no calibration token; each is weighted with the mean "
                 "importance of its tensor's seen experts", sum(data.unseen_experts.values()), len(data.unseen_experts))
    if output is not None:
        from aqrecipe.imatrix.io import save_imatrix

        save_imatrix(data, output)
        log.info("wrote imatrix %s (%d tensors)", output, len(data))
    return data


def imatrix_from_result(result: CalibrationResult, spec: CalibrationSpec) -> ImatrixData:
    return ImatrixData.from_channel_stats(result.stats, datasets=[spec.describe()],
                                          chunk_count=result.n_samples, chunk_size=result.seq_len)
