"""The pinned copy of llama.cpp's converter: ``convert_hf_to_gguf.py``, its ``conversion`` package, gguf-py.

aqrecipe does not re-implement per-architecture conversion: it runs llama.cpp's own code, taken
from the llama.cpp tree vendored in one pinned llama-cpp-python sdist (the same release whose
``llama_cpp`` evaluates our files). The three parts are extracted once into
``~/.cache/aqrecipe/converter/<version>/`` (or ``$AQRECIPE_CONVERTER_DIR``); ``make install`` does
it and installs the bundle's gguf-py as the environment's ``gguf`` (the converter needs the gguf-py
of its own commit, which PyPI's release of the same number predates).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from aqrecipe.errors import UnsupportedArchitectureError

#: The llama-cpp-python release whose vendored llama.cpp supplies the converter.
CONVERTER_VERSION = "0.3.36"
ENV_DIR = "AQRECIPE_CONVERTER_DIR"
ENV_SDIST = "AQRECIPE_LLAMACPP_SDIST"  # a local llama_cpp_python sdist (offline use; also the tests' build)
_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
_SETUP_HINT = "run `make install` (or `python -m aqrecipe.models.converter install`), which fetches it from PyPI"


class ConverterError(UnsupportedArchitectureError):
    """llama.cpp's converter is missing, mismatched, or refused the model."""

    code = "AQ311"


def bundle_dir() -> Path:
    """Where the converter bundle lives (it may not exist yet)."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "aqrecipe" / "converter" / CONVERTER_VERSION


def is_present(folder: Path | None = None) -> bool:
    folder = bundle_dir() if folder is None else folder
    return all((folder / part).exists() for part in _PARTS)


def require_bundle() -> Path:
    """The bundle folder; ConverterError with the setup command when it is absent or mismatched."""
    folder = bundle_dir()
    if not is_present(folder):
        raise ConverterError(
            f"llama.cpp's converter (llama-cpp-python {CONVERTER_VERSION}) is not set up in {folder}",
            hint=_SETUP_HINT,
        )
    check_gguf_matches(folder)
    return folder


def _tree_digest(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _gguf_matches(folder: Path) -> bool:
    import gguf

    return _tree_digest(Path(gguf.__file__).parent) == _tree_digest(folder / "gguf-py" / "gguf")


def check_gguf_matches(folder: Path) -> None:
    """The imported ``gguf`` must be the bundle's gguf-py: the converter uses its newest API."""
    import gguf

    if not _gguf_matches(folder):
        raise ConverterError(
            f"the installed gguf package ({Path(gguf.__file__).parent}) is not the gguf-py that llama.cpp's converter "
            f"of llama-cpp-python {CONVERTER_VERSION} was written for",
            hint="run `python -m aqrecipe.models.converter install` (make install does it): it installs "
            "the bundle's gguf-py into this environment",
        )


def fetch_sdist(dest: Path, version: str = CONVERTER_VERSION) -> Path:
    """The llama_cpp_python sdist (``$AQRECIPE_LLAMACPP_SDIST`` if set, else ``pip download``)."""
    env = os.environ.get(ENV_SDIST)
    if env:
        return Path(env)
    dest.mkdir(parents=True, exist_ok=True)
    # --no-binary for this package only; pip's cache keeps the download for the next time.
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "llama_cpp_python",
           f"llama_cpp_python=={version}", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise ConverterError(
            f"could not download the llama_cpp_python {version} sdist: {done.stderr.strip()[-400:]}",
            hint=f"check the connection to PyPI, or set {ENV_SDIST} to a downloaded llama_cpp_python-{version}.tar.gz",
        )
    return found[0]


def extract_bundle(sdist: Path, folder: Path) -> Path:
    """Extract the converter's three parts from ``sdist`` into ``folder`` (atomically: all or nothing)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".converter-") as tmp:
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                parts = member.name.split("/")
                if len(parts) >= 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3] in _PARTS:
                    member.name = "/".join(parts[3:])
                    members.append(member)
            if not members:
                raise ConverterError(f"{sdist} holds no vendor/llama.cpp converter", hint=_SETUP_HINT)
            tar.extractall(tmp, members=members, filter="data")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        Path(tmp).mkdir()  # TemporaryDirectory cleans up a folder of this name
    return folder


def install(*, install_gguf: bool = True) -> Path:
    """Fetch and extract the bundle if absent; install its gguf-py into this environment."""
    folder = bundle_dir()
    if not is_present(folder):
        with tempfile.TemporaryDirectory() as tmp:
            extract_bundle(fetch_sdist(Path(tmp)), folder)
    if install_gguf and not _gguf_matches(folder):
        import importlib

        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
               str(folder / "gguf-py")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConverterError(f"pip could not install {folder / 'gguf-py'}: {done.stderr.strip()[-400:]}",
                                 hint="check that this environment is writable")
        importlib.invalidate_caches()
    return folder
