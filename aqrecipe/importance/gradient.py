"""Gradient sensitivity: |W * dL/dW| on the calibration loss (first-order Taylor saliency).

Full-model torch autograd on a few windows: the demo (135M parameters) takes
seconds on CPU. Per linear weight we keep the sum and the maximum of the
saliency (the planner's per-tensor score) and, for ffn_down, the per-column sums
(stored as arrays) and the largest entry; the saliency of given weights (the
activation detector's candidates) is looked up while the gradients exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from aqrecipe.optional import require_torch

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

GRADIENT = "gradient super-weight detection"


@dataclass
class GradientResult:
    loss: float
    tensor_sum: dict[str, float]  # llama.cpp name -> sum |W*g|
    tensor_max: dict[str, float]  # llama.cpp name -> max |W*g|
    tensor_argmax: dict[str, tuple[int, int, float]]  # name -> (row, col, W value) of the max
    column_sums: dict[str, np.ndarray] = field(default_factory=dict)  # ffn_down only
    lookups: dict[tuple[str, int, int], float] = field(default_factory=dict)

    def down_max_median(self) -> float:
        """Median over ffn_down tensors of their max saliency (the gradient-ratio baseline)."""
        vals = [v for k, v in self.tensor_max.items() if k.endswith(".ffn_down.weight")]
        return float(np.median(vals)) if vals else 0.0


def gradient_saliency(source: WeightSource, windows: np.ndarray,
                      lookups: Sequence[tuple[str, int, int]] = ()) -> GradientResult:
    """Run loss + backward on ``windows`` ``[samples, seq_len]`` and collect |W * dL/dW|.

    ``lookups``: (llama.cpp name, row, col) whose saliency to report.
    """
    torch, _ = require_torch(GRADIENT)
    model = load_torch_model(source)
    ids = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    to_gguf = {t.hf_name: t.gguf_name for t in source.tensors}
    res = GradientResult(loss=float(loss.detach()), tensor_sum={}, tensor_max={}, tensor_argmax={})
    wanted: dict[str, list[tuple[int, int]]] = {}
    for name, r, c in lookups:
        wanted.setdefault(name, []).append((r, c))
    with torch.no_grad():
        for hf, p in model.named_parameters():
            if p.grad is None or p.ndim != 2 or hf not in to_gguf:
                continue
            gname = to_gguf[hf]
            s = (p * p.grad).abs()
            flat = int(torch.argmax(s))
            r, c = divmod(flat, s.shape[1])
            res.tensor_sum[gname] = float(s.sum(dtype=torch.float64))
            res.tensor_max[gname] = float(s.view(-1)[flat])
            res.tensor_argmax[gname] = (r, c, float(p[r, c]))
            if gname.endswith(".ffn_down.weight"):
                res.column_sums[gname] = s.sum(dim=0).numpy().astype(np.float32)
            for rr, cc in wanted.get(gname, ()):
                res.lookups[(gname, rr, cc)] = float(s[rr, cc])
    del model
    return res


def load_torch_model(source: WeightSource):
    """The full HF model in float32 on CPU, weights read through ``source`` (so edits apply)."""
    torch, transformers = require_torch(GRADIENT)

    config = transformers.AutoConfig.from_pretrained(str(source.path))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    present = {t.hf_name for t in source.tensors}
    state = {n: torch.from_numpy(np.array(source.read(n), dtype=np.float32))
             for n, _ in model.named_parameters() if n in present}
    missing = model.load_state_dict(state, strict=False).missing_keys
    if any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"weights missing from the model source: {missing[:3]}")
    if "lm_head.weight" in missing:
        model.tie_weights()
    model.eval()
    return model
