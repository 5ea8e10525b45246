"""Build (once) llama.cpp's own tools for the interop tests and the benchmarks against llama.cpp.

The sources are the llama.cpp tree vendored in the llama-cpp-python sdist the project
already depends on (same version as the installed ``llama_cpp``), fetched with pip.
Only the tool targets are built: Release, CPU only, static libraries (the binaries
do not depend on the build folder), niced and with 2 jobs so a shared machine stays usable.

The result lives in ``~/.cache/aqrecipe/llama.cpp-tools/<version>/bin`` (or under
``$AQRECIPE_LLAMACPP_TOOLS``). A lock file serialises parallel test processes; the
build happens in a temporary sibling folder that is renamed into place when complete,
so a killed build never leaves a half-built cache behind. Nothing of llama.cpp is
stored in this repository.

Environment: ``AQRECIPE_LLAMACPP_SDIST`` = a local llama_cpp_python sdist (offline use),
``AQRECIPE_LLAMACPP_JOBS`` = parallel compile jobs (default 2).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_VERSION = "0.3.36"  # llama-cpp-python release whose vendored llama.cpp we build
TARGETS = ("llama-imatrix", "llama-quantize", "llama-perplexity", "llama-bench")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)
# Top-level folders of llama.cpp the tool build never reads (vocab test files, docs: ~110 MB).
_SKIP_DIRS = ("models", "docs", "media")
_MIN_CMAKE = (3, 18)


class LlamaCppBuildError(RuntimeError):
    """The tools could not be built; the message carries the failing step's output."""


def llamacpp_version() -> str:
    """The llama-cpp-python version to take llama.cpp from (the installed one if any)."""
    try:
        import llama_cpp

        return str(llama_cpp.__version__)
    except Exception:  # not installed or broken: the pinned default
        return DEFAULT_VERSION


def tools_root() -> Path:
    """The cache folder holding one subfolder per version."""
    env = os.environ.get("AQRECIPE_LLAMACPP_TOOLS")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aqrecipe" / "llama.cpp-tools"


def _tool_paths(folder: Path) -> dict[str, Path]:
    return {name: folder / "bin" / name for name in TARGETS}


def _complete(folder: Path) -> bool:
    return (folder / "build-info.json").is_file() and all(
        p.is_file() and os.access(p, os.X_OK) for p in _tool_paths(folder).values())


def llamacpp_tools(version: str | None = None) -> dict[str, Path]:
    """Paths of the tools in ``TARGETS`` by name, building them on first use.

    Raises :class:`LlamaCppBuildError` when the build fails (tests then fail: they are
    meant to run, not to be skipped).
    """
    version = version or llamacpp_version()
    root = tools_root()
    final = root / version
    if _complete(final):
        return _tool_paths(final)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{version}.lock"):
        if _complete(final):  # another process built it while we waited
            return _tool_paths(final)
        for stale in root.glob(f".{version}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = root / f".{version}.tmp-{os.getpid()}"
        try:
            _build(version, tmp, root)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _tool_paths(final)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path, **kw) -> None:
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, **kw).returncode
    if rc != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise LlamaCppBuildError(f"{cmd[0]} failed with exit code {rc}:\n{tail}")


def _build(version: str, tmp: Path, root: Path) -> None:
    start = time.monotonic()
    tmp.mkdir(parents=True)
    log = tmp / "build.log"
    sdist = _sdist(version, tmp / "sdist", log)
    src = _extract_llamacpp(sdist, tmp / "src")
    cmake, generator = _cmake(root, log)
    jobs = os.environ.get("AQRECIPE_LLAMACPP_JOBS", "2")
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    build = tmp / "build"
    _run(nice + [cmake, "-S", str(src), "-B", str(build), *generator, *CMAKE_FLAGS], log)
    _run(nice + [cmake, "--build", str(build), "-j", jobs, "--target", *TARGETS], log)
    (tmp / "bin").mkdir()
    for name in TARGETS:
        found = [p for p in build.rglob(name) if p.is_file() and os.access(p, os.X_OK)]
        if not found:
            raise LlamaCppBuildError(f"the build finished but produced no {name} under {build}")
        shutil.copy2(found[0], tmp / "bin" / name)
    info = {"llama_cpp_python": version, "sdist": sdist.name, "cmake_flags": list(CMAKE_FLAGS),
            "targets": list(TARGETS), "jobs": jobs, "build_seconds": round(time.monotonic() - start, 1)}
    for folder in ("src", "build", "sdist"):  # only the static binaries are kept (~10 MB)
        shutil.rmtree(tmp / folder, ignore_errors=True)
    (tmp / "build-info.json").write_text(json.dumps(info, indent=1) + "\n")


def _sdist(version: str, dest: Path, log: Path) -> Path:
    env = os.environ.get("AQRECIPE_LLAMACPP_SDIST")
    if env:
        return Path(env)
    dest.mkdir(parents=True, exist_ok=True)
    # --no-binary for this one package only: ":all:" would also build its build
    # dependencies (cmake itself) from source just to prepare the metadata.
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama_cpp_python",
          f"llama_cpp_python=={version}", "-d", str(dest)], log)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise LlamaCppBuildError(f"pip download left no llama_cpp_python sdist in {dest}")
    return found[0]


def _extract_llamacpp(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/")
            if len(parts) < 3 or parts[1:3] != ["vendor", "llama.cpp"]:
                continue
            if len(parts) > 4 and parts[3] in _SKIP_DIRS:
                continue
            members.append(m)
        if not members:
            raise LlamaCppBuildError(f"{sdist} holds no vendor/llama.cpp tree")
        tar.extractall(dest, members=members, filter="data")
    top = members[0].name.split("/")[0]
    return dest / top / "vendor" / "llama.cpp"


def _version_of(cmake: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ()
    m = re.search(r"(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else ()


def _cmake(root: Path, log: Path) -> tuple[str, list[str]]:
    """A recent cmake (the system's, else one pip-installed into a build-only venv) and a generator."""
    system = shutil.which("cmake")
    if system and _version_of(system) >= _MIN_CMAKE:
        cmake = system
        ninja = shutil.which("ninja")
    else:
        env = root / "buildenv"
        bin_dir = env / "bin"
        if not (bin_dir / "cmake").is_file() or not (bin_dir / "ninja").is_file():
            shutil.rmtree(env, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(env)], log)
            _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "cmake", "ninja"], log)
        cmake, ninja = str(bin_dir / "cmake"), str(bin_dir / "ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    return cmake, generator


if __name__ == "__main__":  # build ahead of the tests: python tests/llamacpp_build.py
    for tool, path in llamacpp_tools().items():
        print(f"{tool}: {path}")
