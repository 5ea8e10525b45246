"""Simulated W8A8 in torch: quantize-dequantize weights and activations inside the linears.

Weights: int8 symmetric, one scale per output row, ``scale = max|w| / 127``.
Activations: per-token dynamic (``scale = max|x_token| / 127`` at run time) or
per-tensor static (a calibrated ``input_scale``). Rounding is torch's
round-half-to-even and values are clamped to [-128, 127], as compressed-tensors
does, so the simulation predicts what an INT8 engine computes.
"""

from __future__ import annotations

from typing import Any, Mapping

QMIN, QMAX = -128, 127


def quantize_weight_int8(weight: Any) -> tuple[Any, Any]:
    """``(q int8 [out, in], scale float32 [out, 1])`` with ``scale = max|row| / 127`` (1 for zero rows)."""
    import torch

    w = weight.detach().to(torch.float32)
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale), QMIN, QMAX).to(torch.int8)
    return q, scale


def fake_quant_per_token(x: Any) -> Any:
    """Per-token (last dim) symmetric int8 quantize-dequantize."""
    import torch

    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.clamp(torch.round(x / scale), QMIN, QMAX) * scale


def fake_quant_static(x: Any, scale: float) -> Any:
    """Per-tensor symmetric int8 quantize-dequantize with a fixed ``scale``."""
    import torch

    return torch.clamp(torch.round(x / scale), QMIN, QMAX) * scale


def static_input_scale(act_max: float) -> float:
    """The per-tensor input scale of a calibrated max |x| (1.0 for an input that never fired)."""
    return float(act_max) / 127.0 if act_max > 0 else 1.0


def _make_linear_class():
    import torch

    class W8A8Linear(torch.nn.Module):
        """A linear whose weight is int8-dequantized and whose input is int8 fake-quantized."""

        def __init__(self, linear: torch.nn.Linear, input_scale: float | None) -> None:
            super().__init__()
            q, scale = quantize_weight_int8(linear.weight)
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.register_buffer("weight", (q.to(torch.float32) * scale).to(linear.weight.dtype))
            self.bias = linear.bias
            self.input_scale = input_scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xq = fake_quant_per_token(x) if self.input_scale is None else fake_quant_static(x, self.input_scale)
            return torch.nn.functional.linear(xq, self.weight, self.bias)

    return W8A8Linear


def decoder_linears(model: Any) -> list[str]:
    """Module names of every ``nn.Linear`` inside the decoder layers (what W8A8 quantizes)."""
    import torch

    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")]


def quantize_model_(model: Any, input_scales: Mapping[str, float] | None = None) -> Any:
    """Replace every decoder linear of ``model`` in place by its simulated W8A8 twin.

    ``input_scales`` (module name -> scale) selects static per-tensor activations;
    None means dynamic per-token. Returns ``model``.
    """
    cls = _make_linear_class()
    for name in decoder_linears(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        # a linear without a calibrated scale (it feeds no GGUF tensor) stays dynamic per-token
        scale = None if input_scales is None or name not in input_scales else float(input_scales[name])
        setattr(parent, child, cls(getattr(parent, child), scale))
    return model
