"""The same recipe gives the same bytes across refactors (issue 14): golden hashes on the demo.

The hashes cover every tensor's name, type and raw bytes, read back with gguf-py and
safetensors; metadata (tool version, plan hash, paths) is left out so that a release
number does not change them. They were recorded from the code before the redesign of
issue 14 (commit c344bb8) and are produced only by the Rust codecs and numpy, so they do
not depend on the CPU. A change that alters them changes what users get: it must be a
deliberate format change, with the new hashes recorded here and the reason in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors import safe_open

from aqrecipe.cli import main

pytestmark = pytest.mark.slow

GOLDEN_Q4_K_M_GGUF = "60f049f8428a83c7823b45a7dbdc7b4f2198cfe243cfde9d6fec4da3b608db70"
GOLDEN_Q4_K_M_SAFETENSORS = "e0174d0f655b8ff4c1e0edb6e614affefd806e427a3d1febbc2784555447f134"


def gguf_tensor_hash(path: Path) -> str:
    h = hashlib.sha256()
    for t in gguf.GGUFReader(str(path)).tensors:
        h.update(t.name.encode())
        h.update(t.tensor_type.name.encode())
        h.update(np.ascontiguousarray(t.data).tobytes())
    return h.hexdigest()


def safetensors_hash(path: Path) -> str:
    h = hashlib.sha256()
    with safe_open(str(path), "np") as f:
        for name in sorted(f.keys()):
            a = f.get_tensor(name)
            h.update(name.encode())
            h.update(str(a.dtype).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def test_demo_q4_k_m_gguf_bytes(demo_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "q4km.gguf"
    assert main(["quantize", "demo", "--type", "Q4_K_M", "-o", str(out), "--no-eval", "-q"]) == 0
    assert gguf_tensor_hash(out) == GOLDEN_Q4_K_M_GGUF


def test_demo_q4_k_m_safetensors_bytes(demo_model_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "st.yaml"
    recipe.write_text("version: 1\nname: bytes-safetensors\nmodel: demo\noutput:\n  format: safetensors\n"
                      "quantization:\n  mixture: Q4_K_M\n", encoding="utf-8")
    out = tmp_path / "st"
    assert main(["apply", str(recipe), "-o", f"{out}/", "--no-eval", "-q"]) == 0
    assert safetensors_hash(out / "model.safetensors") == GOLDEN_Q4_K_M_SAFETENSORS
