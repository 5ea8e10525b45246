"""``aqrecipe imatrix compute | show | convert``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from aqrecipe.cli.terminal import printable
from aqrecipe.errors import EXIT_OK

log = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: flags given before the action (aqrecipe imatrix --json show) are kept
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings only")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")


def add_imatrix_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="imatrix_action", required=True, metavar="ACTION")

    c = sub.add_parser("compute", help="compute an importance matrix by calibration")
    _common(c)
    c.add_argument("model", help="'demo' or a Hugging Face model folder")
    c.add_argument("-o", "--output", required=True, help="output imatrix (.gguf or .dat)")
    c.add_argument("--source", default="builtin-wiki", choices=["builtin-wiki", "text", "jsonl", "hf-dataset"],
                   help="calibration text source (default: built-in Wikipedia sample)")
    c.add_argument("--text", dest="path", help="text or JSON-lines file (for --source text/jsonl)")
    c.add_argument("--field", default="text", help="JSON-lines / dataset field (default text)")
    c.add_argument("--dataset", dest="name", help="Hugging Face dataset name (for --source hf-dataset)")
    c.add_argument("--dataset-config", dest="config", help="Hugging Face dataset config")
    c.add_argument("--split", default="train", help="dataset split (default train)")
    c.add_argument("--samples", type=int, default=512, help="windows of text (128..1024, default 512)")
    c.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--all-experts", action="store_true",
                   help="MoE models: every expert's statistics from every token (llm-compressor's "
                        "moe_calibrate_all_experts), not only from the tokens routed to it")
    c.add_argument("--work-dir", help="checkpoint folder (default: <output>.work); a killed run resumes")
    c.add_argument("--restart", action="store_true", help="discard the work folder's checkpoints")
    c.add_argument("--device", default="auto", help="auto | cpu | cuda")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward batch")
    c.add_argument("--no-output-weight", action="store_true", help="skip output.weight's statistics")
    from aqrecipe.cli.apply_flags import add_max_memory_flag

    add_max_memory_flag(c)

    s = sub.add_parser("show", help="per-layer table of an imatrix (.gguf or .dat)")
    _common(s)
    s.add_argument("path")
    s.add_argument("--chunk-size", type=int, help="chunk size of a .dat file (default 512)")

    v = sub.add_parser("convert", help="convert between .dat and .gguf (by suffix)")
    _common(v)
    v.add_argument("src")
    v.add_argument("dest")
    v.add_argument("--chunk-size", type=int, help="chunk size a .dat was made with (default 512)")


def run_imatrix_command(args: argparse.Namespace) -> int:
    action = args.imatrix_action
    as_json = getattr(args, "json", False)
    if action == "show":
        from aqrecipe.imatrix.io import load_imatrix
        from aqrecipe.imatrix.show import summarize_imatrix

        data, text = summarize_imatrix(load_imatrix(args.path, chunk_size=args.chunk_size))
        print(json.dumps(data, indent=1, sort_keys=True) if as_json else printable(text))  # names from the file
        return EXIT_OK
    if action == "convert":
        from aqrecipe.imatrix.io import convert_imatrix

        data = convert_imatrix(args.src, args.dest, chunk_size=args.chunk_size)
        payload = {"src": args.src, "dest": args.dest, "entries": len(data)}
        print(json.dumps(payload) if as_json else printable(f"wrote {args.dest} ({len(data)} tensors)"))
        return EXIT_OK
    return _compute(args, as_json)


def _compute(args: argparse.Namespace, as_json: bool) -> int:
    from aqrecipe.calibration.data import CalibrationSpec
    from aqrecipe.calibration.runner import RunnerOptions
    from aqrecipe.formats.paths import Write, check_write_targets, model_reads
    from aqrecipe.imatrix.compute import compute_imatrix

    out = Path(args.output)
    work = Path(args.work_dir) if args.work_dir else out.with_name(out.name + ".work")
    check_write_targets({"imatrix output (-o)": out, "work folder": Write(work, "work")},
                        {**model_reads(args.model), "calibration text (--text)": args.path and Path(args.path)})

    spec = CalibrationSpec(source=args.source, path=args.path, field=args.field, name=args.name,
                           config=args.config, split=args.split, samples=args.samples,
                           seq_len=args.seq_len, seed=args.seed, all_experts=args.all_experts)
    options = RunnerOptions(device=args.device, dtype=args.dtype, batch_tokens=args.batch_tokens,
                            include_output=not args.no_output_weight)
    from aqrecipe.cli.apply_flags import max_memory_bytes
    from aqrecipe.calibration.memory import limited_options

    # size the cache and batches to --max-memory, or refuse before any work
    options = limited_options(options, args.model, spec, max_memory_bytes(args))
    data = compute_imatrix(args.model, spec, work, output=out, restart=args.restart, options=options,
                           quiet=getattr(args, "quiet", False) or as_json)
    payload = {"output": str(out), "work_dir": str(work), **data.to_dict()}
    payload.pop("entries")
    payload["n_entries"] = len(data)
    payload["unseen_experts"] = data.unseen_experts
    text = f"wrote {out}: {len(data)} tensors, {data.chunk_count} x {data.chunk_size} tokens"
    if data.unseen_experts:
        text += (f"; {sum(data.unseen_experts.values())} expert slices in {len(data.unseen_experts)} tensors saw no "
                 "token (their importance is the mean of the seen experts'; --all-experts calibrates every expert)")
    print(json.dumps(payload, indent=1, sort_keys=True) if as_json else printable(text))
    return EXIT_OK
