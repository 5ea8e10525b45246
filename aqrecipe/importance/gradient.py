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
    res = GradientResult(loss=float(loss.detach()), tensor_sum={}, tensor_max={}, tensor_argmax={})
    wanted: dict[str, list[tuple[int, int]]] = {}
    for name, r, c in lookups:
        wanted.setdefault(name, []).append((r, c))
    with torch.no_grad():
        for hf, p in model.named_parameters():
            gnames = tuple(source.gguf_names_of(hf))
            # a weight the converter splits over several GGUF tensors has no one score to give
            if p.grad is None or p.ndim != 2 or len(gnames) != 1:
                continue
            gname = gnames[0]
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
    """The full HF model in float32 on CPU, weights read through ``source`` (so edits apply).

    The model is built on the meta device from the HF folder's config (buffers real), then every
    parameter is read through ``source.read``; a tied output head is tied again.
    """
    torch, _ = require_torch(GRADIENT)
    from aqrecipe.calibration.experts import converted_params, load_converted
    from aqrecipe.calibration.hf_model import empty_model, hf_tensor_shapes

    model = empty_model(source, GRADIENT)
    stored = set(hf_tensor_shapes(source))
    tensors = [*model.named_parameters(), *model.named_buffers()]
    state = {n: torch.from_numpy(np.array(source.read(n), dtype=np.float32)) for n, _ in tensors if n in stored}
    missing = model.load_state_dict(state, strict=False, assign=True).missing_keys
    tied = {k for k in missing if k == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)}
    # parameters stored under other names (fused experts, renamed routers): transformers' own conversion
    converted = converted_params(model, model, "", stored | tied)
    load_converted(model, model, converted, source.read, "cpu", torch.float32)
    done = {c.param for c in converted} | tied | set(state)
    left = [k for k in missing if k not in done]
    if left:
        raise RuntimeError(f"weights missing from the model source: {sorted(left)[:3]}")
    if tied:
        model.tie_weights()
    model.float()
    model.eval()
    return model
