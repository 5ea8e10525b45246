"""aqrecipe against llama.cpp's own tools, on the float model, one run, same machine.

What: for each llama.cpp file type (Q4_K_M, Q3_K_M, Q2_K, IQ2_XXS by default) four files are
made from the same inputs and evaluated by the same program:

- ``llama.cpp``: ``llama-quantize --imatrix IM f16.gguf out.gguf T 2``;
- ``aqrecipe rtn``: ``aqrecipe quantize FLOAT_FOLDER --type T --imatrix IM`` (llama.cpp's rounding);
- ``aqrecipe gptq``: the same with ``--rounding gptq`` (its Hessians come from aqrecipe's own
  calibration pass over the built-in Wikipedia calibration split, 512 windows x 512 tokens);
- ``aqrecipe planner``: the planner (``--target-bpw X``) at llama.cpp's size: X is chosen so that
  the planner's byte budget (``target_bpw`` x every parameter / 8, over all tensors, the F32 norms
  included) equals the tensor bytes of llama.cpp's file; both sizes are printed.

How: the float HF folder (:func:`bench.float_model.float_demo`) is converted once to an F16 GGUF
(``aqrecipe quantize --type F16``). ONE importance matrix is computed by ``llama-imatrix`` on that
F16 file from the built-in calibration split (GGUF format); both tools quantize with it. Every file
is scored by ``llama-perplexity --kl-divergence`` against F16 logits computed once on the built-in
evaluation split (Wikipedia articles held out from calibration by a title hash): mean KLD, PPL,
"same top p". Times are wall-clock times of the whole quantizing process (2 threads).

The F16 file, the imatrix and the base logits are cached in the work folder
(``~/.cache/aqrecipe/bench/vs-llamacpp/`` or ``--work``), keyed by a short hash of their inputs;
every quantized file is made and evaluated afresh, each aqrecipe run in its own ``--work-dir``.

Usage::

    .venv/bin/python bench/bench_vs_llamacpp.py                       # all four types, all rows
    .venv/bin/python bench/bench_vs_llamacpp.py Q4_K_M --chunks 4 --no-planner --no-gptq   # smoke
    .venv/bin/python bench/bench_vs_llamacpp.py --planner-types Q4_K_M Q2_K --gptq-types Q4_K_M Q2_K \
        --json out.json                                               # the slow rows at two sizes only
    .venv/bin/python bench/bench_vs_llamacpp.py Q4_K_M --no-rtn --no-gptq --measurement type=fisher calibrate_tensors=0
                                                                      # the planner with other measurement settings
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

DEFAULT_TYPES = ("Q4_K_M", "Q3_K_M", "Q2_K", "IQ2_XXS")
METHODS = ("llama.cpp", "aqrecipe rtn", "aqrecipe gptq", "aqrecipe planner")
CACHE_VERSION = 1  # bump when how the cached F16 / imatrix / base logits are made changes
EVAL_SPLIT = "built-in evaluation split (Wikipedia articles held out by title hash, aqrecipe.formats.corpus)"
CALIB_SPLIT = "built-in calibration split (the other Wikipedia articles)"
GPTQ_CALIBRATION = ("aqrecipe's own pass over the built-in calibration split, 512 windows x 512 tokens, "
                    "seed 0 (CalibrationSection defaults); the imatrix file is only the packer's importance")


@dataclass
class Row:
    """One quantized file: how it was made, its size, its scores and its quantizer's time."""

    file_type: str
    method: str
    path: str
    tensor_bytes: int
    file_bytes: int
    n_params: int
    seconds: float
    kld: float
    kld_err: float
    ppl: float
    ppl_err: float
    same_top: float  # percent
    types: dict[str, int] = field(default_factory=dict)  # ggml type -> tensor count
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bpw(self) -> float:
        return 8 * self.tensor_bytes / self.n_params


# --- processes ------------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A step failed; the message carries the tail of its log."""


def run_logged(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` with its output in ``log``; its wall time in seconds (BenchError on failure)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        fh.flush()
        t0 = time.perf_counter()
        rc = subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}).returncode
        seconds = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchError(f"{Path(cmd[0]).name} failed (exit {rc}), log {log}:\n{tail}")
    return seconds


def aqrecipe_cli() -> Path:
    """The ``aqrecipe`` console script of the interpreter running this bench."""
    exe = Path(sys.executable).parent / "aqrecipe"
    if not exe.is_file():
        raise BenchError(f"no aqrecipe script next to {sys.executable}: run with the project's .venv/bin/python")
    return exe


# --- machine and tool versions ----------------------------------------------------------------


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the SIMD flags llama.cpp cares about (from lscpu / cpuinfo)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.CalledProcessError):
        pass
    if not flags and Path("/proc/cpuinfo").is_file():
        m = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        flags = set(m.group(1).split()) if m else set()
    simd = {"avx2": "avx2" in flags, "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "amx": sorted(f for f in flags if f.startswith("amx"))}
    return {"model": model, "cpus": os.cpu_count(), **simd}


def cpu_line(info: dict[str, Any]) -> str:
    avx512 = f"yes ({' '.join(info['avx512'])})" if info["avx512"] else "no"
    amx = f"yes ({' '.join(info['amx'])})" if info["amx"] else "no"
    return (f"CPU: {info['model']} ({info['cpus']} logical CPUs); AVX2: {'yes' if info['avx2'] else 'no'}; "
            f"AVX512: {avx512}; AMX: {amx}")


def llamacpp_info(tools: dict[str, Path]) -> dict[str, Any]:
    """The llama-cpp-python release the tools come from, their build info and ``--version`` line."""
    folder = tools["llama-perplexity"].parent.parent
    build = json.loads((folder / "build-info.json").read_text()) if (folder / "build-info.json").is_file() else {}
    try:
        out = subprocess.run([str(tools["llama-perplexity"]), "--version"], capture_output=True, text=True,
                             timeout=60)
        version = " ".join(l.strip() for l in (out.stdout + out.stderr).splitlines() if l.strip())
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"unknown ({exc})"
    return {"llama_cpp_python": build.get("llama_cpp_python", folder.name), "version": version,
            "build": build, "bin": str(folder / "bin")}


def system_info_line(log: Path) -> str:
    """llama.cpp's ``system_info:`` line from a tool's log ('' when absent)."""
    m = re.search(r"system_info:.*$", log.read_text(errors="replace"), re.M)
    return m.group(0).strip() if m else ""


# --- GGUF sizes -------------------------------------------------------------------------------


def gguf_tensor_stats(path: Path) -> tuple[int, int, dict[str, int]]:
    """(tensor data bytes, parameters, tensor count by ggml type) of a GGUF file."""
    from collections import Counter

    from aqrecipe.formats.gguf_read import open_gguf

    reader = open_gguf(path)
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return n_bytes, n_params, dict(sorted(types.items()))


def planner_bpw(tensor_bytes: int, n_params: int) -> float:
    """The ``--target-bpw`` whose budget is ``tensor_bytes``.

    The planner's budget is ``int(target_bpw * n_params / 8)`` bytes for all tensors of the file
    (quantized ones and the F32 norms it does not choose), over all parameters
    (:meth:`aqrecipe.recipe.sections.PlannerSpec.budget_bytes`); half a byte more keeps the
    floor on ``tensor_bytes`` itself.
    """
    return 8 * (tensor_bytes + 0.5) / n_params


# --- cached inputs: texts, F16, imatrix, base logits -------------------------------------------


def short_hash(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def folder_manifest(folder: Path) -> list[tuple[str, int]]:
    """(name, size) of every file of an HF folder: what the F16 conversion reads."""
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file())


def write_text_once(folder: Path, stem: str, text: str) -> Path:
    """``text`` as ``folder/stem-HASH.txt`` (written only when absent)."""
    path = folder / f"{stem}-{short_hash(text)}.txt"
    if not path.is_file():
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def drop_stale(folder: Path, pattern: str, keep: Path) -> None:
    """Remove cached files matching ``pattern`` other than ``keep`` (base logits are ~1 GB)."""
    for p in folder.glob(pattern):
        if p != keep:
            p.unlink(missing_ok=True)


def cached_f16(cache: Path, folder: Path, aq: Path) -> tuple[Path, float | None]:
    """The float folder as an F16 GGUF (aqrecipe quantize --type F16); seconds when made now."""
    import aqrecipe

    key = short_hash(CACHE_VERSION, str(folder), folder_manifest(folder), getattr(aqrecipe, "__version__", "?"))
    out = cache / f"f16-{key}.gguf"
    if out.is_file():
        return out, None
    tmp = cache / f"f16-{key}.tmp.gguf"
    seconds = run_logged([aq, "quantize", folder, "--type", "F16", "-o", tmp, "--no-eval", "-q",
                          "--work-dir", cache / "work-f16"], cache / "logs" / "f16.log")
    os.replace(tmp, out)
    shutil.rmtree(cache / "work-f16", ignore_errors=True)
    drop_stale(cache, "f16-*.gguf", out)
    return out, seconds


def cached_imatrix(cache: Path, tools: dict[str, Path], f16: Path, calib: Path, chunks: int, context: int,
                   threads: int) -> tuple[Path, float | None]:
    """ONE llama-imatrix file (GGUF format) from the calibration text; seconds when made now."""
    key = short_hash(CACHE_VERSION, f16.name, calib.name, chunks, context, str(tools["llama-imatrix"].parent))
    out = cache / f"imatrix-{key}.gguf"
    if out.is_file():
        return out, None
    tmp = cache / f"imatrix-{key}.tmp.gguf"
    seconds = run_logged([tools["llama-imatrix"], "-m", f16, "-f", calib, "-o", tmp, "--output-format", "gguf",
                          "-c", context, "--chunks", chunks, "-t", threads], cache / "logs" / "imatrix.log")
    os.replace(tmp, out)
    return out, seconds


def cached_base(cache: Path, tools: dict[str, Path], f16: Path, text: Path, chunks: int, context: int,
                threads: int) -> tuple[Path, dict[str, Any]]:
    """F16 logits on the evaluation text (llama-perplexity --kl-divergence-base) and their summary."""
    key = short_hash(CACHE_VERSION, f16.name, text.name, chunks, context, str(tools["llama-perplexity"].parent))
    out, meta_path = cache / f"base-{key}.kld", cache / f"base-{key}.json"
    if out.is_file() and meta_path.is_file():
        return out, {**json.loads(meta_path.read_text()), "cached": True}
    log = cache / "logs" / "base.log"
    tmp = cache / f"base-{key}.tmp.kld"
    seconds = run_logged([tools["llama-perplexity"], "-m", f16, "-f", text, "--kl-divergence-base", tmp,
                          "-c", context, "--chunks", chunks, "-t", threads], log)
    meta = {**parse_base_log(log.read_text(errors="replace")), "seconds": round(seconds, 2),
            "system_info": system_info_line(log)}
    os.replace(tmp, out)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    drop_stale(cache, "base-*.kld", out)
    return out, {**meta, "cached": False}


def parse_base_log(text: str) -> dict[str, Any]:
    """Chunks used and the F16 perplexity from a llama-perplexity run that wrote base logits."""
    chunks = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)", text)
    ppl = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", text)
    if not chunks or not ppl:
        raise BenchError("could not find the chunk count or the final PPL in llama-perplexity's output")
    return {"chunks": int(chunks.group(1)), "context": int(chunks.group(2)), "ppl": float(ppl.group(1)),
            "ppl_err": float(ppl.group(2))}


# --- evaluation -------------------------------------------------------------------------------


_NUM = r"([-+\d.eE]+)"


def parse_kld_log(text: str) -> dict[str, float]:
    """Mean PPL(Q), mean KLD and "Same top p" (percent), each with its +- from llama-perplexity."""
    found = {}
    for key, pattern in (("ppl", rf"Mean PPL\(Q\)\s*:\s*{_NUM}\s*±\s*{_NUM}"),
                         ("kld", rf"Mean\s+KLD:\s*{_NUM}\s*±\s*{_NUM}"),
                         ("same_top", rf"Same top p:\s*{_NUM}\s*±\s*{_NUM}\s*%")):
        m = re.search(pattern, text)
        if not m:
            raise BenchError(f"llama-perplexity's output has no {key!r} line (pattern {pattern!r})")
        found[key], found[f"{key}_err"] = float(m.group(1)), float(m.group(2))
    return found


def evaluate_kld(tools: dict[str, Path], model: Path, base: Path, context: int, threads: int,
                 log: Path) -> dict[str, float]:
    """Score ``model`` against the F16 base logits in llama-perplexity."""
    seconds = run_logged([tools["llama-perplexity"], "-m", model, "--kl-divergence-base", base, "--kl-divergence",
                          "-c", context, "-t", threads], log)
    return {**parse_kld_log(log.read_text(errors="replace")), "eval_seconds": round(seconds, 2)}


# --- the four ways to make a file ---------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """What every row shares: tools, the float folder, F16 file, imatrix and base logits."""

    tools: dict[str, Path]
    aq: Path
    folder: Path
    f16: Path
    imatrix: Path
    base: Path
    context: int
    threads: int
    measurement: dict[str, Any] = field(default_factory=dict)  # planner.measurement settings (default: none)


def quantize_llamacpp(inp: Inputs, file_type: str, out: Path, logs: Path) -> tuple[float, dict[str, Any]]:
    seconds = run_logged([inp.tools["llama-quantize"], "--imatrix", inp.imatrix, inp.f16, out, file_type,
                          inp.threads], logs / "quantize.log")
    return seconds, {}


def quantize_aqrecipe(inp: Inputs, file_type: str, out: Path, logs: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    """``aqrecipe quantize FLOAT --type T --imatrix IM`` plus ``extra`` flags, in its own work folder."""
    report = logs / "report.json"
    seconds = run_logged([inp.aq, "quantize", inp.folder, "--type", file_type, "--imatrix", inp.imatrix, "-o", out,
                          "--no-eval", "--report", report, "--work-dir", out.parent / "work", *extra],
                         logs / "quantize.log", env={"RAYON_NUM_THREADS": str(inp.threads)})
    data = json.loads(report.read_text())
    info = {"stage_seconds": data.get("seconds"), "plan_bpw": data.get("bits_per_weight")}
    if "rounding" in data:
        info["rounding"] = data["rounding"]
    return seconds, info


def plan_with_measurement(inp: Inputs, file_type: str, bpw: float, out: Path, logs: Path) -> tuple[float, dict[str, Any]]:
    """The planner row with ``inp.measurement`` settings: the recipe ``quantize --target-bpw`` stands
    for (``--emit-recipe``) with those in its ``planner.measurement``, run by ``aqrecipe apply``."""
    emitted = subprocess.run([str(inp.aq), "quantize", str(inp.folder), "--type", file_type, "--imatrix",
                              str(inp.imatrix), "--target-bpw", repr(bpw), "--emit-recipe"],
                             check=True, capture_output=True, text=True).stdout
    recipe = yaml.safe_load(emitted)
    recipe["planner"]["measurement"] = dict(inp.measurement)
    path = logs / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    report = logs / "report.json"
    seconds = run_logged([inp.aq, "apply", path, "-o", out, "--no-eval", "--report", report,
                          "--work-dir", out.parent / "work"], logs / "quantize.log",
                         env={"RAYON_NUM_THREADS": str(inp.threads)})
    data = json.loads(report.read_text())
    return seconds, {"stage_seconds": data.get("seconds"), "plan_bpw": data.get("bits_per_weight")}


def make_row(inp: Inputs, file_type: str, method: str, rows_dir: Path, reference: Row | None) -> Row:
    """Quantize one file (fresh folder) and score it."""
    folder = rows_dir / file_type / method.replace(" ", "-").replace(".", "")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / f"{file_type}.gguf"
    extra: dict[str, Any] = {}
    if method == "llama.cpp":
        seconds, info = quantize_llamacpp(inp, file_type, out, folder)
    elif method == "aqrecipe rtn":
        seconds, info = quantize_aqrecipe(inp, file_type, out, folder)
    elif method == "aqrecipe gptq":
        seconds, info = quantize_aqrecipe(inp, file_type, out, folder, "--rounding", "gptq")
        extra["calibration"] = GPTQ_CALIBRATION
    elif method == "aqrecipe planner":
        assert reference is not None
        bpw = planner_bpw(reference.tensor_bytes, reference.n_params)
        extra.update(target_bpw=bpw, target_bytes=reference.tensor_bytes, measurement=inp.measurement)
        if inp.measurement:
            seconds, info = plan_with_measurement(inp, file_type, bpw, out, folder)
        else:
            seconds, info = quantize_aqrecipe(inp, file_type, out, folder, "--target-bpw", repr(bpw))
    else:
        raise ValueError(method)
    tensor_bytes, n_params, types = gguf_tensor_stats(out)
    scores = evaluate_kld(inp.tools, out, inp.base, inp.context, inp.threads, folder / "kld.log")
    return Row(file_type, method, str(out), tensor_bytes, out.stat().st_size, n_params, round(seconds, 2),
               scores["kld"], scores["kld_err"], scores["ppl"], scores["ppl_err"], scores["same_top"], types,
               {**extra, **info, "eval_seconds": scores["eval_seconds"]})


# --- output -------------------------------------------------------------------------------------


def table(rows: list[Row], base: dict[str, Any]) -> str:
    ref = {r.file_type: r for r in rows if r.method == "llama.cpp"}
    lines = ["| file | tensor bytes (bpw) | file MiB | KLD | KLD / llama.cpp | PPL | same top | wall s | "
             "time / llama-quantize |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        theirs = ref.get(r.file_type)
        kld_ratio = f"{r.kld / theirs.kld:.3f}" if theirs and theirs.kld > 0 else "-"
        t_ratio = f"{r.seconds / theirs.seconds:.1f}x" if theirs and theirs.seconds > 0 else "-"
        lines.append(f"| {r.method} {r.file_type} | {r.tensor_bytes:,} ({r.bpw:.3f}) | {r.file_bytes / 2**20:.2f} | "
                     f"{r.kld:.5f} ± {r.kld_err:.5f} | {kld_ratio} | {r.ppl:.3f} | {r.same_top:.2f}% | "
                     f"{r.seconds:.1f} | {t_ratio} |")
    lines.append(f"| F16 reference | | | 0 | | {base['ppl']:.3f} | 100% | | |")
    return "\n".join(lines)


def planner_types_line(rows: list[Row]) -> list[str]:
    return [f"  {r.method} {r.file_type}: target_bpw {r.extra['target_bpw']:.6f} (budget {r.extra['target_bytes']:,} "
            f"bytes = llama.cpp's tensor bytes), ours {r.tensor_bytes:,} bytes; types {r.types}"
            for r in rows if r.method == "aqrecipe planner"]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("types", nargs="*", default=list(DEFAULT_TYPES), help="llama.cpp file types (default: all four)")
    ap.add_argument("--chunks", type=int, default=40, help="evaluation windows (fewer if the text is shorter)")
    ap.add_argument("--context", type=int, default=512, help="tokens per evaluation / imatrix window")
    ap.add_argument("--imatrix-chunks", type=int, default=64, help="llama-imatrix windows of the calibration split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-rtn", action="store_true", help="skip the aqrecipe rtn rows")
    ap.add_argument("--no-gptq", action="store_true", help="skip the aqrecipe --rounding gptq rows")
    ap.add_argument("--no-planner", action="store_true", help="skip the planner rows")
    ap.add_argument("--planner-types", nargs="*", metavar="TYPE",
                    help="run the planner only at these types' sizes (default: every type)")
    ap.add_argument("--gptq-types", nargs="*", metavar="TYPE",
                    help="run gptq only for these types (default: every type; each run has its own Hessian pass)")
    ap.add_argument("--measurement", nargs="*", default=[], metavar="KEY=VALUE",
                    help="planner.measurement settings of the planner rows, e.g. type=fisher calibrate_tensors=0 "
                         "(default: the recipe defaults)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default ~/.cache/aqrecipe/bench/vs-llamacpp)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (default WORK/results.json)")
    return ap.parse_args(argv)


def methods_for(file_type: str, args: argparse.Namespace) -> list[str]:
    methods = ["llama.cpp"] + ([] if args.no_rtn else ["aqrecipe rtn"])
    if not args.no_gptq and (args.gptq_types is None or file_type in args.gptq_types):
        methods.append("aqrecipe gptq")
    if not args.no_planner and (args.planner_types is None or file_type in args.planner_types):
        methods.append("aqrecipe planner")
    return methods


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from float_model import float_demo
    from llamacpp_build import llamacpp_tools

    from aqrecipe.formats import corpus

    started = time.perf_counter()
    work = (args.work or Path.home() / ".cache" / "aqrecipe" / "bench" / "vs-llamacpp").expanduser()
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    json_path = args.json or work / "results.json"
    cpu = cpu_info()
    print(cpu_line(cpu), flush=True)
    tools = llamacpp_tools()
    llama = llamacpp_info(tools)
    print(f"llama.cpp: tools from llama-cpp-python {llama['llama_cpp_python']} ({llama['version']})", flush=True)

    folder = float_demo()
    aq = aqrecipe_cli()
    f16, f16_seconds = cached_f16(cache, folder, aq)
    calib = write_text_once(cache, "calib", corpus.calibration_text())
    evaltext = write_text_once(cache, "eval", corpus.evaluation_text())
    imatrix, imatrix_seconds = cached_imatrix(cache, tools, f16, calib, args.imatrix_chunks, args.context,
                                              args.threads)
    base_path, base = cached_base(cache, tools, f16, evaltext, args.chunks, args.context, args.threads)
    print(f"float model: {folder}\nF16: {f16} ({f16.stat().st_size / 2**20:.2f} MiB"
          f"{'' if f16_seconds is None else f', made in {f16_seconds:.1f} s'})", flush=True)
    print(f"imatrix: {imatrix} (llama-imatrix, GGUF format, {args.imatrix_chunks} x {args.context} tokens of the "
          f"{CALIB_SPLIT}{'' if imatrix_seconds is None else f', {imatrix_seconds:.1f} s'}; cached when no time)")
    print(f"evaluation: {base['chunks']} x {base['context']} tokens of the {EVAL_SPLIT}; F16 PPL {base['ppl']:.3f}"
          f"{' (cached base logits)' if base['cached'] else ''}")
    print(f"llama.cpp {base.get('system_info', '')}", flush=True)

    measurement = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.measurement)}
    inp = Inputs(tools, aq, folder, f16, imatrix, base_path, args.context, args.threads, measurement)
    rows: list[Row] = []
    payload: dict[str, Any] = {
        "machine": {**cpu, "line": cpu_line(cpu), "system_info": base.get("system_info")},
        "llama_cpp": llama, "float_model": str(folder), "f16": str(f16),
        "imatrix": {"path": str(imatrix), "tool": "llama-imatrix", "format": "gguf", "chunks": args.imatrix_chunks,
                    "context": args.context, "text": CALIB_SPLIT, "seconds": imatrix_seconds},
        "evaluation": {"text": EVAL_SPLIT, "file": str(evaltext), **base},
        "gptq_calibration": GPTQ_CALIBRATION, "threads": args.threads, "rows": [],
    }
    for file_type in args.types:
        reference: Row | None = None
        for method in methods_for(file_type, args):
            row = make_row(inp, file_type, method, work / "rows", reference)
            reference = row if method == "llama.cpp" else reference
            rows.append(row)
            print(f"  {method} {file_type}: {row.tensor_bytes:,} tensor bytes, KLD {row.kld:.5f}, PPL {row.ppl:.3f}, "
                  f"same top {row.same_top:.2f}%, {row.seconds:.1f} s", flush=True)
            payload["rows"] = [{**asdict(r), "bpw": r.bpw} for r in rows]
            write_json(json_path, payload)
    payload["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(json_path, payload)
    print()
    print(table(rows, base))
    for line in planner_types_line(rows):
        print(line)
    print(f"\ngptq calibration: {GPTQ_CALIBRATION}")
    print(f"results: {json_path}; bench wall time {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
