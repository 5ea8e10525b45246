"""The demo model through llama.cpp, the real consumer of our GGUF files.

Our Q8_0 / Q4_0 / Q4_K_M files must load and generate, have the per-tensor types
llama.cpp's own quantizer chooses for the same file type, and Q8_0 must keep
perplexity within 1% of F16.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from llamacpp_tools import greedy, llama_quantize, tensor_types  # noqa: E402

from aqrecipe.cli.commands import main  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]

TYPES = ["Q8_0", "Q4_0", "Q4_K_M"]


@pytest.fixture(scope="module")
def demo_files(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from aqrecipe.evaluate.reference import reference_gguf

    out = tmp_path_factory.mktemp("demo-gguf")
    files = {"F16": reference_gguf(demo_model_dir)}
    for t in TYPES:
        files[t] = out / f"demo-{t}.gguf"
        assert main(["quantize", str(demo_model_dir), "--type", t, "-o", str(files[t]), "-q"]) == 0
    return files


@pytest.mark.parametrize("file_type", TYPES)
def test_loads_and_generates(demo_files: dict[str, Path], file_type: str) -> None:
    text = greedy(demo_files[file_type], "The capital of France is")
    assert len(text.split()) >= 3
    if file_type == "Q8_0":
        assert "Paris" in text


@pytest.mark.parametrize("file_type", TYPES)
def test_same_tensor_types_as_llama_quantize(demo_files: dict[str, Path], file_type: str, tmp_path: Path) -> None:
    theirs = tmp_path / f"llama-{file_type}.gguf"
    llama_quantize(demo_files["F16"], theirs, file_type)
    assert tensor_types(demo_files[file_type]) == tensor_types(theirs)


def test_q8_0_perplexity_within_one_percent_of_f16(demo_files: dict[str, Path]) -> None:
    from aqrecipe.evaluate import evaluate

    report = evaluate(demo_files["Q8_0"], reference=demo_files["F16"], chunks=4, context=512)
    assert report.perplexity_quantized == pytest.approx(report.perplexity_original, rel=0.01)
    assert report.kld_mean < 0.01
    assert report.top1_agreement > 0.9
