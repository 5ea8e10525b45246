"""SC-003: the SmoothQuant Q8_0 GGUF against F16 in llama.cpp's own ``llama-bench``, on the float model.

What: prefill (pp512) and decode (tg128) tokens/s of two files of the float model
(:func:`bench.float_model.float_demo`): its F16 GGUF (``aqrecipe quantize --type F16``) and its
smoothed Q8_0 GGUF made as ``recipes/smoothquant-q8_0.yaml`` makes it (that recipe's
``smoothquant`` section and calibration size, with the float folder as the model). Prints both
speeds, the Q8_0 / F16 ratios, the CPU model and whether AMX was present.

How: ``llama-bench -m F16 -m Q8 -p 512 -n 128 -t 2 -r 3 -o json`` (the tools that
``tests/llamacpp_build.py`` builds). aqrecipe's AMX remedy (repacking off exactly when llama.cpp
reports ``AMX_INT8 = 1``; ``AQRECIPE_LLAMACPP_REPACK=on|off`` overrides) is applied to llama-bench
as ``--repack 0``; the output says whether it applied. Timing-sensitive: run it on a quiet
machine, not next to another benchmark. The F16 file is shared with bench_vs_llamacpp.py's cache;
the smoothed file is cached beside it (keyed by a hash of its inputs).

Usage::

    .venv/bin/python bench/bench_llamabench.py [--reps 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_vs_llamacpp import (  # noqa: E402
    aqrecipe_cli, cached_f16, cpu_info, cpu_line, folder_manifest, llamacpp_info, short_hash, write_json,
)

RECIPE = ROOT / "recipes" / "smoothquant-q8_0.yaml"
REPACK_ENV = "AQRECIPE_LLAMACPP_REPACK"  # as aqrecipe.evaluate.llamacpp_worker.REPACK_ENV


def recipe_settings(recipe: Path = RECIPE) -> tuple[dict[str, Any], int, int]:
    """The recipe's smoothquant section and its calibration samples / seq_len."""
    data = yaml.safe_load(recipe.read_text())
    calib = data.get("imatrix", {}).get("calibration", {})
    return data["smoothquant"], int(calib.get("samples", 512)), int(calib.get("seq_len", 512))


def cached_smoothed_q8(cache: Path, folder: Path) -> tuple[Path, float | None]:
    """The smoothed Q8_0 GGUF of ``folder`` (run_smoothquant as the recipe says); seconds when made now."""
    import aqrecipe
    from aqrecipe.apply.smoothquant import run_smoothquant
    from aqrecipe.calibration import CalibrationSpec

    section, samples, seq_len = recipe_settings()
    key = short_hash(str(folder), folder_manifest(folder), section, samples, seq_len,
                     getattr(aqrecipe, "__version__", "?"))
    out = cache / f"smoothquant-q8_0-{key}.gguf"
    if out.is_file():
        return out, None
    t0 = time.perf_counter()
    run_smoothquant(section, str(folder), CalibrationSpec(samples=samples, seq_len=seq_len), cache / f"sq-{key}", out,
                    evaluate=False)
    return out, time.perf_counter() - t0


def tool_system_info(tools: dict[str, Path], model: Path, threads: int) -> str:
    """llama.cpp's ``system_info`` line of these tools (one short llama-perplexity load of ``model``)."""
    out = subprocess.run([str(tools["llama-perplexity"]), "-m", str(model), "-f", os.devnull, "-t", str(threads)],
                         capture_output=True, text=True, timeout=300)
    m = re.search(r"system_info:.*$", out.stdout + out.stderr, re.M)
    return m.group(0).strip() if m else ""


def repack_choice(system_info: str) -> tuple[bool, str]:
    """(repack on?, why): aqrecipe's rule for llama.cpp on this CPU, applied to llama-bench."""
    setting = os.environ.get(REPACK_ENV, "auto").strip().lower()
    if setting in ("on", "1", "true", "yes"):
        return True, f"{REPACK_ENV}={setting}"
    if setting in ("off", "0", "false", "no"):
        return False, f"{REPACK_ENV}={setting}"
    if "AMX_INT8 = 1" in system_info:
        return False, "llama.cpp reports AMX_INT8 = 1: remedy applied (--repack 0)"
    return True, "llama.cpp does not report AMX_INT8 = 1: remedy not needed (repack on, llama.cpp's default)"


def llama_bench(tools: dict[str, Path], models: Sequence[Path], threads: int, reps: int, repack: bool,
                log: Path) -> list[dict[str, Any]]:
    """llama-bench's JSON records (one per model and test)."""
    cmd = [str(tools["llama-bench"]), *[a for m in models for a in ("-m", str(m))], "-p", "512", "-n", "128",
           "-t", str(threads), "-r", str(reps), "--repack", "1" if repack else "0", "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ " + " ".join(cmd) + "\n" + out.stderr + "\n--- stdout ---\n" + out.stdout)
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed (exit {out.returncode}), log {log}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def test_name(record: dict[str, Any]) -> str:
    return f"pp{record['n_prompt']}" if record.get("n_prompt") else f"tg{record['n_gen']}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default ~/.cache/aqrecipe/bench/vs-llamacpp)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (default WORK/llamabench.json)")
    args = ap.parse_args(argv)
    from float_model import float_demo
    from llamacpp_build import llamacpp_tools

    work = (args.work or Path.home() / ".cache" / "aqrecipe" / "bench" / "vs-llamacpp").expanduser()
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    print(cpu_line(cpu), flush=True)
    tools = llamacpp_tools()
    llama = llamacpp_info(tools)
    folder = float_demo()
    f16, _ = cached_f16(cache, folder, aqrecipe_cli())
    q8, q8_seconds = cached_smoothed_q8(cache, folder)
    print(f"F16: {f16} ({f16.stat().st_size / 2**20:.2f} MiB)\nQ8_0 smoothed: {q8} ({q8.stat().st_size / 2**20:.2f} MiB"
          f"{'' if q8_seconds is None else f', made in {q8_seconds:.0f} s'}; {RECIPE.relative_to(ROOT)})", flush=True)
    system_info = tool_system_info(tools, f16, args.threads)
    repack, why = repack_choice(system_info)
    print(f"llama.cpp tools from llama-cpp-python {llama['llama_cpp_python']} ({llama['version']})\n{system_info}\n"
          f"AMX in CPU flags: {', '.join(cpu['amx']) or 'no'}; {why}", flush=True)
    load = os.getloadavg()
    records = llama_bench(tools, [f16, q8], args.threads, args.reps, repack, work / "logs" / "llama-bench.log")
    speeds = {(Path(r["model_filename"]).name, test_name(r)): (float(r["avg_ts"]), float(r["stddev_ts"]))
              for r in records}
    print(f"\nllama-bench -p 512 -n 128 -t {args.threads} -r {args.reps} --repack {int(repack)} "
          f"(load average before: {load[0]:.2f})\n")
    print("| file | MiB | pp512 tok/s | tg128 tok/s |\n|---|---:|---:|---:|")
    for label, path in (("F16", f16), ("Q8_0 smoothed", q8)):
        pp, tg = speeds[(path.name, "pp512")], speeds[(path.name, "tg128")]
        print(f"| {label} | {path.stat().st_size / 2**20:.2f} | {pp[0]:.1f} ± {pp[1]:.1f} | {tg[0]:.1f} ± {tg[1]:.1f} |")
    ratios = {t: speeds[(q8.name, t)][0] / speeds[(f16.name, t)][0] for t in ("pp512", "tg128")}
    print(f"| Q8_0 smoothed / F16 | | {ratios['pp512']:.2f}x | {ratios['tg128']:.2f}x |")
    json_path = args.json or work / "llamabench.json"
    write_json(json_path, {"machine": {**cpu, "line": cpu_line(cpu)}, "system_info": system_info,
                           "repack": repack, "repack_reason": why, "llama_cpp": llama, "load_average": load,
                           "files": {"f16": str(f16), "q8_0_smoothed": str(q8)}, "records": records,
                           "ratios": ratios})
    print(f"results: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
