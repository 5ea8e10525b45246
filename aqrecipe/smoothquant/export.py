"""Outputs: a compressed-tensors ``int-quantized`` checkpoint and a Q8_0 GGUF of the smoothed model."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

from aqrecipe.smoothquant.fakequant import quantize_weight_int8

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def copy_tokenizer(source: Any, folder: Path) -> list[str]:
    """Copy the tokenizer files of ``source`` into ``folder``; the names copied."""
    src = Path(source.tokenizer_dir or source.path)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, folder / name)
            copied.append(name)
    return copied


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``dest``; on success it replaces ``dest`` (an earlier output)."""
    from ..safetensors_out import check_folder_output

    dest = Path(dest)
    check_folder_output(dest)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def quantization_config(input_scales: Mapping[str, float] | None) -> Any:
    """The compressed-tensors config: int8 per-channel weights, int8 per-token or per-tensor inputs."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    weights = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)
    if input_scales is None:
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    else:
        acts = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="tensor", dynamic=False)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)
    return QuantizationConfig(config_groups={"group_0": scheme}, quantization_status="frozen",
                              ignore=["lm_head"])


def write_compressed_tensors(model: Any, source: Any, dest: Path,
                             input_scales: Mapping[str, float] | None = None) -> None:
    """Write ``model`` (the smoothed float model; consumed) as an int-quantized checkpoint.

    Weight scales are ours (per output row, ``max|w| / 127``); the compressed-tensors
    library attaches the scheme, quantizes with those scales, writes config.json's
    ``quantization_config``. ``input_scales`` (module name -> scale) selects static
    per-tensor activations (``<m>.input_scale``); None selects dynamic per-token.
    """
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    apply_quantization_config(model, quantization_config(input_scales))
    with torch.no_grad():
        for name, module in model.named_modules():
            if getattr(module, "quantization_scheme", None) is None:
                continue
            _, scale = quantize_weight_int8(module.weight)
            module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
            if input_scales is not None:
                module.input_scale.fill_(float(input_scales[name]))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp)
        compressor.update_config(str(tmp))
        copy_tokenizer(source, tmp)


def write_smoothed_folder(model: Any, source: Any, folder: Path) -> Path:
    """Save the smoothed float model as a float32 HF folder (with tokenizer) in ``folder``."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(source, tmp)
    return folder


def write_q8_0_gguf(model: Any, source: Any, dest: Path, work_dir: Path) -> Path:
    """A Q8_0 GGUF of the smoothed model, through a smoothed HF folder under ``work_dir``."""
    from aqrecipe.apply import write_plan_gguf
    from aqrecipe.fileio import check_output_folder
    from aqrecipe.models import open_model
    from aqrecipe.plan import PlanSpec, compile_plan

    check_output_folder(Path(dest))
    folder = write_smoothed_folder(model, source, Path(work_dir) / "smoothed-hf")
    smoothed = open_model(folder)
    plan = compile_plan(smoothed, PlanSpec(mixture="Q8_0"), model_ref=str(folder))
    write_plan_gguf(plan, Path(dest))
    return folder
