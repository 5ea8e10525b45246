"""Outputs: a compressed-tensors ``int-quantized`` checkpoint and a Q8_0 GGUF of the smoothed model.

The Q8_0 GGUF is the source's own conversion with the smoothed tensors replaced: the smoothed HF
tensors (the groups' norms and linears) go through llama.cpp's converter
(``source.convert_values``), which applies whatever it applies to them (the q/k rope
permutation, Gemma's ``+ 1`` on norm weights), so nothing of a family's layout is written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from aqrecipe.formats.fileio import atomic_folder
from aqrecipe.optional import require
from aqrecipe.output.safetensors import check_folder_output, copy_tokenizer
from aqrecipe.smoothquant.fakequant import quantize_weight_int8

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource
    from aqrecipe.smoothquant.mappings import SmoothGroup

COMPRESSED_TENSORS = "writing a compressed-tensors W8A8 checkpoint"


def quantization_config(input_scales: Mapping[str, float] | None) -> Any:
    """The compressed-tensors config: int8 per-channel weights, int8 per-token or per-tensor inputs."""
    ct = require("compressed_tensors.quantization", COMPRESSED_TENSORS)
    QuantizationArgs, QuantizationConfig, QuantizationScheme = (
        ct.QuantizationArgs, ct.QuantizationConfig, ct.QuantizationScheme)

    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    if input_scales is None:
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    else:
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="tensor", dynamic=False)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)
    return QuantizationConfig(config_groups={"group_0": scheme}, quantization_status="frozen",
                              ignore=["lm_head"])


def write_compressed_tensors(model: Any, source: WeightSource, dest: Path,
                             input_scales: Mapping[str, float] | None = None) -> None:
    """Write ``model`` (the smoothed float model; consumed) as an int-quantized checkpoint.

    Weight scales are ours (per output row, ``max|w| / 127``); the compressed-tensors
    library attaches the scheme, quantizes with those scales, writes config.json's
    ``quantization_config``. ``input_scales`` (module name -> scale) selects static
    per-tensor activations (``<m>.input_scale``); None selects dynamic per-token.
    """
    import torch  # the model is a torch module: torch is there

    compressors = require("compressed_tensors.compressors", COMPRESSED_TENSORS)
    quantization = require("compressed_tensors.quantization", COMPRESSED_TENSORS)

    quantization.apply_quantization_config(model, quantization_config(input_scales))
    with torch.no_grad():
        for name, module in model.named_modules():
            if getattr(module, "quantization_scheme", None) is None:
                continue
            _, scale = quantize_weight_int8(module.weight)
            module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
            if input_scales is not None:
                module.input_scale.fill_(float(input_scales[name]))
    compressor = compressors.ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    check_folder_output(Path(dest))
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp)
        compressor.update_config(str(tmp))
        copy_tokenizer(source, tmp)


class _Replaced:
    """``source`` with some GGUF tensors replaced (everything else delegated)."""

    def __init__(self, source: WeightSource, replaced: Mapping[str, np.ndarray]) -> None:
        self._source = source
        self._replaced = dict(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def read_for_gguf(self, name: str) -> np.ndarray:
        gguf_name = self._source.tensor(name).gguf_name
        if gguf_name in self._replaced:
            return self._replaced[gguf_name]
        return self._source.read_for_gguf(name)


def smoothed_hf_tensors(model: Any, groups: Iterable[SmoothGroup]) -> dict[str, np.ndarray]:
    """The HF tensors smoothing changed (each group's norm weight and bias, its linears' weights), float32."""
    import torch  # the model is a torch module: torch is there

    modules = dict(model.named_modules())
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for g in groups:
            for name in (g.norm, *g.linears):
                for kind in ("weight", "bias"):
                    param = getattr(modules[name], kind, None)
                    if isinstance(param, torch.Tensor) and (name == g.norm or kind == "weight"):
                        out[f"{name}.{kind}"] = param.detach().to(torch.float32).numpy().copy()
    return out


def write_q8_0_gguf(model: Any, source: WeightSource, dest: Path, groups: Iterable[SmoothGroup]) -> None:
    """A Q8_0 GGUF of the smoothed ``model``: the source's tensors, the smoothed ones converted anew."""
    from aqrecipe._testhooks import reached
    from aqrecipe.formats.fileio import check_output_folder
    from aqrecipe.output.gguf import PlannedTensor, write_gguf
    from aqrecipe.output.pack import pack_entry
    from aqrecipe.plan import PlanSpec, compile_plan

    check_output_folder(Path(dest))
    replaced = source.convert_values(smoothed_hf_tensors(model, groups))  # type: ignore[attr-defined]
    smoothed = _Replaced(source, replaced)
    plan = compile_plan(source, PlanSpec(mixture="Q8_0"), model_ref=str(source.path))
    entries = {e.gguf_name: e for e in plan.entries}
    planned = [PlannedTensor(e.gguf_name, e.hf_name, e.shape, e.type) for e in plan.entries]

    def produce(t: PlannedTensor) -> np.ndarray:
        reached("pack")
        return pack_entry(smoothed, entries[t.gguf_name])  # type: ignore[arg-type]

    metadata = {"aqrecipe.version": plan.tool_version, "aqrecipe.plan_sha256": plan.sha256(),
                "aqrecipe.smoothquant": "smoothed (SmoothQuant), then Q8_0"}
    write_gguf(dest, smoothed, planned, produce, metadata, plan.file_type)  # type: ignore[arg-type]
