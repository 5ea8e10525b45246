"""Clear limits (issue 15, item 5): what works from a GGUF file, and from an architecture the torch stages cannot run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest

from aqrecipe.cli import commands as cli
from aqrecipe.errors import EXIT_OK, EXIT_USER_ERROR


@pytest.fixture(scope="module")
def tiny_f16_gguf(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    assert cli.main(["quantize", str(tiny_llama_dir), "--type", "F16", "-o", str(dest), "--no-eval", "-q"]) == EXIT_OK
    return dest


@pytest.fixture(scope="module")
def tiny_imatrix(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("imatrix") / "im.gguf"
    argv = ["imatrix", "compute", str(tiny_llama_dir), "-o", str(dest), "--samples", "128", "--seq-len", "32", "-q"]
    assert cli.main(argv) == EXIT_OK
    return dest


def test_gguf_input_plans_with_an_imatrix_file_by_the_proxy_alone(
    tiny_f16_gguf: Path, tiny_imatrix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "planned.gguf"
    argv = ["quantize", str(tiny_f16_gguf), "--type", "Q4_K_M", "--target-bpw", "6", "--imatrix", str(tiny_imatrix),
            "-o", str(out), "--no-eval"]
    assert cli.main(argv) == EXIT_OK
    assert "ranks the types uncalibrated" in capsys.readouterr().err
    reader = gguf.GGUFReader(out)
    types = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert len(types) > 1  # the planner mixed types
    assert bytes(reader.get_field("tokenizer.ggml.pre").parts[-1]).decode() == "smollm"  # carried over


def test_gguf_input_refuses_the_torch_stages_naming_the_stage(tiny_f16_gguf: Path, tiny_imatrix: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.gguf"
    for flag, stage in (("--protect-super-weights", "super-weight"), ("--type=Q4_K_M", "imatrix calibration")):
        extra = [flag, "--imatrix", str(tiny_imatrix)] if flag.startswith("--protect") else []
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"version: 1\nmodel: {tiny_f16_gguf}\nquantization:\n  mixture: Q4_K_M\n"
                          "imatrix:\n  type: compute\n  calibration:\n    samples: 128\n    seq_len: 32\n")
        argv = (["quantize", str(tiny_f16_gguf), "--type", "Q4_K_M", *extra, "-o", str(out), "--no-eval"]
                if extra else ["apply", str(recipe), "-o", str(out), "--no-eval"])
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == EXIT_USER_ERROR and "Traceback" not in err, err
        assert stage in err and "Hugging Face folder" in err, err
        assert not out.exists()


def _tiny_gpt2(folder: Path) -> Path:
    """GPT-2: llama.cpp's converter reads it, but it has no model.layers for the layer-by-layer torch stages."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from aqrecipe.models.demo import materialize_demo

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=49152, n_embd=256, n_layer=2, n_head=4, n_positions=128,
                        bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    data = json.loads((folder / "config.json").read_text())
    data["n_ctx"] = 128  # the converter reads GPT-2's context length under its original key
    (folder / "config.json").write_text(json.dumps(data))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(materialize_demo() / name, folder / name)
    return folder


def test_an_architecture_the_torch_stages_cannot_run_still_packs(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = _tiny_gpt2(tmp_path / "gpt2")
    packed = tmp_path / "gpt2-q8.gguf"
    assert cli.main(["quantize", str(folder), "--type", "Q8_0", "-o", str(packed), "--no-eval", "-q"]) == EXIT_OK
    reader = gguf.GGUFReader(packed)
    assert bytes(reader.get_field("general.architecture").parts[-1]).decode() == "gpt2"
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "blk.1.attn_qkv.weight", "position_embd.weight"}
    capsys.readouterr()
    code = cli.main(["imatrix", "compute", str(folder), "-o", str(tmp_path / "im.gguf"), "--samples", "128"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err
    assert "calibration" in err and "layer by layer" in err, err
