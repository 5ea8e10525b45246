"""The message for a weight that holds NaN or Inf: which tensor, and the checkpoint's own row and column.

Packing finds such weights (the codecs refuse them) and so does calibration (before a layer runs,
so the NaN is not blamed on the next layer whose input it poisons); both say it the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aqrecipe.errors import NonFiniteWeightError

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource


def non_finite_error(
    source: WeightSource, gguf_name: str, fallback: NonFiniteWeightError | None = None
) -> NonFiniteWeightError:
    """NonFiniteWeightError naming the tensor and the checkpoint row/column of its first NaN/Inf.

    The position is the checkpoint's own (HF orientation, before llama.cpp's q/k permutation) when
    the model is an HF folder, the GGUF tensor's otherwise.
    """
    info = source.tensor(gguf_name)
    hf_name = info.hf_name
    from_checkpoint = source.hf_folder is not None and hf_name != gguf_name
    values = source.read(hf_name) if from_checkpoint else source.read_for_gguf(gguf_name)
    bad = np.flatnonzero(~np.isfinite(values.reshape(-1)))
    if bad.size == 0:  # non-finite only after a transform: keep the codec's own position
        where = fallback.message if fallback is not None else "a non-finite value"
        return NonFiniteWeightError(f"tensor {hf_name} ({info.gguf_name}): {where}", hint=_NON_FINITE_HINT)
    index = np.unravel_index(int(bad[0]), values.shape)
    value = float(values[index])
    shown = "NaN" if np.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if len(index) == 2:
        where = f"row {index[0]}, column {index[1]}"
    else:
        where = "index " + ", ".join(str(int(i)) for i in index)
    return NonFiniteWeightError(
        f"tensor {hf_name} ({info.gguf_name}) holds {shown} at {where} "
        f"({bad.size} of its {values.size} values are NaN or Inf)",
        hint=_NON_FINITE_HINT,
    )


_NON_FINITE_HINT = (
    "the checkpoint holds NaN/Inf (a damaged download or a diverged training run): download or export "
    "it again, or repair that tensor (e.g. torch.nan_to_num) before quantizing"
)
