"""Super weights of the demo model: what they are, what zeroing them costs, what protecting them buys.

1. imatrix of the demo (``--samples`` x ``--seq-len`` calibration windows; cached in --work).
2. importance analysis (combined detection, ``--detect-samples`` x ``--detect-seq-len``),
   saved as an importance file and plotted to ``--plot`` (docs/super-weights-demo.png).
3. PPL of the F16 model and of the F16 model with the super weights zeroed (llama.cpp).
4. SC-005: mixture ``--mixture`` with ffn_down at ``--low`` and the imatrix, without and with
   protection (raise-tensor Q8_0 + imatrix boost), plus equal-byte controls: the same bytes
   spent on other ffn_down tensors (most important by gradient score), and imatrix-only protection.

All evaluations: llama.cpp, built-in eval split, ``--chunks`` x ``--context``, 2 threads.

``--simulated``: SC-005 with exact-value restoration instead (simulated quantization, torch F32,
the original F32 model as reference; aqrecipe/simulate.py). Per ``--low`` type and ``--settings``
(with / without the imatrix), the ``--variants``: unprotected; super weights restored (count x 8
bytes); control: as many random ordinary weights of the same tensors restored (same bytes);
raise-tensor Q8_0 + restored; raise-tensor Q8_0 alone; control: the same bytes spent raising the
top-gradient ffn_down tensors that hold no super weight. Steps 3-4 above are skipped; tensors
unchanged between variants are not re-simulated; results merge into results-simulated.json.
Usage: python bench/bench_super_weights.py [--low Q2_K IQ2_XXS] [--work out/superweights]
       [--simulated [--settings imatrix none] [--variants unprotected restored ...]]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from aqrecipe.output.plan_gguf import write_plan_gguf
from aqrecipe.evaluate import CachedBackend, LlamaCppBackend, evaluate
from aqrecipe.importance import (DetectSpec, ProtectSpec, analyze_importance, load_importance, plot_importance,
                                 protect_plan, save_importance, summarize_importance)
from aqrecipe.importance.activation import ZeroedSource
from aqrecipe.models import open_model
from aqrecipe.plan import PlanSpec, Rule, compile_plan
from aqrecipe.evaluate.reference import reference_gguf

ROOT = Path(__file__).resolve().parent.parent
SIM_VARIANTS = {
    "unprotected": "unprotected",
    "restored": "super weights restored",
    "control-restore": "control: as many random weights of the same tensors restored",
    "raised": "raise-tensor Q8_0 + restored",
    "raised-only": "raise-tensor Q8_0, not restored",
    "control-raise": "control: same bytes, top-gradient ffn_down without super weights at Q8_0",
}


def demo_imatrix(work: Path, samples: int, seq_len: int):
    from aqrecipe.calibration.data import CalibrationSpec
    from aqrecipe.imatrix import compute_imatrix, load_imatrix

    path = work / f"demo-imatrix-{samples}x{seq_len}.gguf"
    if path.exists():
        return load_imatrix(path)
    spec = CalibrationSpec(samples=samples, seq_len=seq_len, enforce_sample_range=False)
    return compute_imatrix("demo", spec, output=path, quiet=True)


def zeroed_f16(source, super_weights, dest: Path) -> Path:
    """The F16 GGUF of the demo with the given weights set to 0."""
    from aqrecipe.output.gguf import PlannedTensor, write_gguf
    from aqrecipe.output.pack import pack_entry

    zsrc = ZeroedSource(source, super_weights)
    plan = compile_plan(source, PlanSpec(mixture="F16"), model_ref=str(source.path))
    entries = {e.gguf_name: e for e in plan.entries}
    planned = [PlannedTensor(e.gguf_name, e.hf_name, e.shape, e.type) for e in plan.entries]
    write_gguf(dest, zsrc, planned, lambda t: pack_entry(zsrc, entries[t.gguf_name], None), {}, plan.file_type)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "superweights")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "super-weights-demo.png")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--detect-samples", type=int, default=8)
    ap.add_argument("--detect-seq-len", type=int, default=128)
    ap.add_argument("--mixture", default="Q4_K_M")
    ap.add_argument("--low", nargs="+", default=["Q2_K", "IQ2_XXS"])
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--skip-zeroing", action="store_true", help="skip the zeroed-F16 evaluations")
    ap.add_argument("--simulated", action="store_true", help="SC-005 with restoration, simulated in torch")
    ap.add_argument("--settings", nargs="+", default=["imatrix"], choices=["imatrix", "none"],
                    help="--simulated: with the imatrix and/or without one")
    ap.add_argument("--variants", nargs="+", default=list(SIM_VARIANTS), choices=list(SIM_VARIANTS),
                    help="--simulated: which variants to run")
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "2")
    args.work.mkdir(parents=True, exist_ok=True)
    source = open_model("demo")
    t0 = time.perf_counter()
    imatrix = demo_imatrix(args.work, args.samples, args.seq_len)
    print(f"imatrix: {args.samples} x {args.seq_len} tokens ({time.perf_counter() - t0:.0f} s)")

    imp_path = args.work / "demo-importance.json"
    if imp_path.exists():
        imp = load_importance(imp_path)
    else:
        t0 = time.perf_counter()
        spec = DetectSpec(type="combined", samples=args.detect_samples, seq_len=args.detect_seq_len)
        imp = analyze_importance(source, spec, imatrix=imatrix)
        save_importance(imp, imp_path)
        print(f"importance analysis: {time.perf_counter() - t0:.0f} s")
    print(summarize_importance(imp)[1])
    plot_importance(imp, args.plot, title="SmolLM2-135M (demo): per-layer importance and super weights")
    print(f"plot: {args.plot}")
    if args.simulated:
        return simulated_sc005(args, source, imatrix, imp)

    f16 = reference_gguf("demo")
    ref = CachedBackend(LlamaCppBackend(f16, n_ctx=args.context, n_threads=2))
    results: dict[str, dict] = {}

    def run(label: str, path: Path) -> None:
        r = evaluate(path, reference=ref, chunks=args.chunks, context=args.context, n_threads=2)
        results[label] = {"bytes": path.stat().st_size, "ppl": r.perplexity_quantized, "kld": r.kld_mean,
                          "top1": r.top1_agreement}
        print(f"| {label} | {path.stat().st_size:,} | {r.perplexity_quantized:.4f} | {r.kld_mean:.5f} | "
              f"{100 * r.top1_agreement:.2f}% |", flush=True)

    print(f"\neval: llama.cpp, built-in eval split, {args.chunks} x {args.context} tokens")
    print("| file | bytes | PPL | KLD | top-1 |\n|---|---|---|---|---|")
    run("F16", f16)
    sws = list(imp.super_weights)
    if sws and not args.skip_zeroing:
        run(f"F16, {len(sws)} super weight(s) zeroed", zeroed_f16(source, sws, args.work / "f16-zeroed.gguf"))
        for sw in sws:
            run(f"F16, only {sw.tensor}[{sw.row},{sw.col}] zeroed",
                zeroed_f16(source, [sw], args.work / "f16-zeroed-one.gguf"))
        # control: zero the same number of random ordinary weights of the same tensors
        import numpy as np
        from dataclasses import replace
        rng = np.random.default_rng(0)
        ctrl = [replace(sw, row=int(rng.integers(0, source.tensor(sw.hf_name).shape[0])),
                        col=int(rng.integers(0, source.tensor(sw.hf_name).shape[1]))) for sw in sws]
        run(f"F16, {len(ctrl)} random weight(s) of the same tensors zeroed",
            zeroed_f16(source, ctrl, args.work / "f16-zeroed-ctrl.gguf"))

    held = {sw.tensor for sw in sws}
    by_grad = sorted((n for n in imp.tensor_scores if n.endswith(".ffn_down.weight") and n not in held),
                     key=lambda n: -imp.tensor_scores[n].get("gradient", 0.0))
    for low in args.low:
        base = [Rule("blk.*.ffn_down.weight", low, "glob", "bench")]
        variants = {f"{low} ffn_down, unprotected": (base, imatrix)}
        prot_rules, prot_im = protect_plan(base, imatrix, imp, ProtectSpec())
        variants[f"{low} ffn_down, protected (raise Q8_0 + boost)"] = (prot_rules, prot_im)
        variants[f"{low} ffn_down, same bytes on top-gradient ffn_down"] = (
            [Rule(n, "Q8_0", "exact", "bench") for n in by_grad[: len(held)]] + base, imatrix)
        _, boost_im = protect_plan(base, imatrix, imp, ProtectSpec(type="imatrix-only"))
        variants[f"{low} ffn_down, imatrix-only boost (same bytes)"] = (base, boost_im)
        for label, (rules, im) in variants.items():
            plan = compile_plan(source, PlanSpec(mixture=args.mixture, rules=tuple(rules)), model_ref="demo")
            dest = args.work / "variant.gguf"
            write_plan_gguf(plan, dest, imatrix=im)
            run(f"{args.mixture} + {label}", dest)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))


def simulated_sc005(args, source, imatrix, imp) -> None:
    """SC-005 in simulated quantization: restoring the exact super weights vs not, at equal size."""
    from dataclasses import replace

    import numpy as np

    from aqrecipe.evaluate import TorchBackend
    from aqrecipe.apply.simulate import RESTORE_ENTRY_BYTES, simulated_tensor

    import torch

    torch.set_num_threads(2)
    sws = list(imp.super_weights)
    rng = np.random.default_rng(0)
    control = []
    for sw in sws:  # ordinary weights of the same tensors, restored at the same cost
        r, c = int(rng.integers(0, source.tensor(sw.hf_name).shape[0])), int(rng.integers(0, source.tensor(sw.hf_name).shape[1]))
        control.append(replace(sw, row=r, col=c, value=float(source.read(sw.hf_name)[r, c])))
    ref = CachedBackend(TorchBackend(source.path))
    model = TorchBackend(source.path)
    loaded: dict[str, tuple] = {}

    def load(plan, im_key, im, restore) -> int:
        changed = []
        for e in plan.entries:
            mine = [sw for sw in restore if sw.tensor == e.gguf_name]
            key = (e.type, im_key if e.quantized else None, tuple((sw.row, sw.col) for sw in mine))
            if loaded.get(e.hf_name) != key:
                imp_row = im.importance(e.gguf_name) if im is not None and e.quantized else None
                changed.append((e.hf_name, simulated_tensor(source, e, imp_row, super_weights=mine)))
                loaded[e.hf_name] = key
        return model.load_weights(changed)

    results: dict[str, dict] = {}
    print(f"\neval: simulated quantization in torch (F32), reference: the F32 demo in torch, built-in eval split, "
          f"{args.chunks} x {args.context} tokens; bytes = plan bytes + {RESTORE_ENTRY_BYTES} per restored value")
    print("| variant | bytes | PPL | KLD | top-1 | PPL vs the group's first row |\n|---|---|---|---|---|---|")
    r0 = evaluate(ref, chunks=args.chunks, context=args.context, n_threads=2)
    print(f"| F32 (original) | {sum(t.nbytes for t in source.tensors):,} | {r0.perplexity_quantized:.4f} | 0 | 100% | |",
          flush=True)
    settings = [(lab, im) for key, lab, im in (("imatrix", "imatrix", imatrix), ("none", "no imatrix", None))
                if key in args.settings]
    held = sorted({sw.tensor for sw in sws})
    others = sorted((n for n in imp.tensor_scores if n.endswith(".ffn_down.weight") and n not in held),
                    key=lambda n: -imp.tensor_scores[n].get("gradient", 0.0))[: len(held)]
    for low in args.low:
        for im_label, im in settings:
            base = [Rule("blk.*.ffn_down.weight", low, "glob", "bench")]
            raised = [Rule(n, "Q8_0", "exact", "bench") for n in held] + base
            all_variants = {"unprotected": (base, []), "restored": (base, sws), "control-restore": (base, control),
                            "raised": (raised, sws), "raised-only": (raised, []),
                            "control-raise": ([Rule(n, "Q8_0", "exact", "bench") for n in others] + base, [])}
            variants = [(SIM_VARIANTS[k], *all_variants[k]) for k in args.variants]
            ppl0 = None
            for label, rules, restore in variants:
                plan = compile_plan(source, PlanSpec(mixture=args.mixture, rules=tuple(rules)), model_ref="demo")
                t0 = time.perf_counter()
                n = load(plan, im_label, im, restore)
                t_sim = time.perf_counter() - t0
                r = evaluate(model, reference=ref, chunks=args.chunks, context=args.context, n_threads=2)
                size = plan.total_bytes + RESTORE_ENTRY_BYTES * len(restore)
                ppl0 = ppl0 or r.perplexity_quantized
                name = f"{args.mixture} + {low} ffn_down, {im_label}, {label}"
                results[name] = {"bytes": size, "ppl": r.perplexity_quantized, "kld": r.kld_mean,
                                 "top1": r.top1_agreement, "tensors_resimulated": n, "simulate_s": round(t_sim, 1)}
                print(f"| {name} | {size:,} | {r.perplexity_quantized:.4f} | {r.kld_mean:.5f} | "
                      f"{100 * r.top1_agreement:.2f}% | {100 * (r.perplexity_quantized / ppl0 - 1):+.2f}% |",
                      flush=True)
    out = args.work / "results-simulated.json"
    merged = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**merged, **results}, indent=1))


if __name__ == "__main__":
    main()
