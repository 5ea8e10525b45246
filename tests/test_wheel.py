"""The built wheel installs on its own and works outside the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import sys, aqrecipe, aqrecipe._packer, numpy as np
from aqrecipe import codecs
from aqrecipe.recipe import load_schema
assert 'torch' not in sys.modules
x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
assert codecs.dequantize(codecs.quantize(x, 'Q8_0'), 'Q8_0', x.shape).shape == (2, 32)
assert load_schema()['properties']['version']['const'] == 1
print(aqrecipe.__file__)
"""


@pytest.mark.slow
def test_wheel_installs_and_imports_from_a_temp_dir(tmp_path: Path) -> None:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")
    if maturin is None:
        pytest.skip("maturin is not installed")
    dist = tmp_path / "dist"
    subprocess.run([maturin, "build", "--release", "--quiet", "-o", str(dist)], cwd=ROOT, check=True)
    wheels = list(dist.glob("aqrecipe-*.whl"))
    assert len(wheels) == 1
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheels[0])],
        check=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(site)
    assert (site / "aqrecipe" / "data" / "recipe.schema.json").is_file()
