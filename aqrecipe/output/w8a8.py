"""Outputs: a compressed-tensors ``int-quantized`` checkpoint and a Q8_0 GGUF of the smoothed model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from aqrecipe.formats.fileio import atomic_folder
from aqrecipe.optional import require
from aqrecipe.output.safetensors import check_folder_output, copy_tokenizer
from aqrecipe.smoothquant.fakequant import quantize_weight_int8

if TYPE_CHECKING:
    from aqrecipe.models.protocol import WeightSource

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


def write_smoothed_folder(model: Any, source: WeightSource, folder: Path) -> Path:
    """Save the smoothed float model as a float32 HF folder (with tokenizer) in ``folder``."""
    folder = Path(folder)
    check_folder_output(folder)
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(source, tmp)
    return folder


def write_q8_0_gguf(model: Any, source: WeightSource, dest: Path, work_dir: Path) -> Path:
    """A Q8_0 GGUF of the smoothed model, through a smoothed HF folder under ``work_dir``."""
    from aqrecipe.output.plan_gguf import write_plan_gguf
    from aqrecipe.formats.fileio import check_output_folder
    from aqrecipe.models import open_model
    from aqrecipe.plan import PlanSpec, compile_plan

    check_output_folder(Path(dest))
    folder = write_smoothed_folder(model, source, Path(work_dir) / "smoothed-hf")
    smoothed = open_model(folder)
    plan = compile_plan(smoothed, PlanSpec(mixture="Q8_0"), model_ref=str(folder))
    write_plan_gguf(plan, Path(dest))
    return folder
