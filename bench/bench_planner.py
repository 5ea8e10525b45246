"""Planner benchmarks.

    python bench/bench_planner.py            # solver time on a synthetic 70B-shaped measurement
    python bench/bench_planner.py --demo DIR [--imatrix FILE]
        # on the demo model: measure (proxy + 16-tensor KLD calibration, 4 x 128 tokens), report Spearman,
        # plan at the sizes of the Q2_K and Q4_K_M mixtures (and 5.0 bpw), write the GGUFs
        # with the imatrix and evaluate them in llama.cpp (chunks 4, context 512) vs the F16 reference.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def bench_synthetic() -> None:
    from aqrecipe.planner import Budget, solve_plan
    from aqrecipe.planner.synthetic import synthetic_measurement

    m = synthetic_measurement()  # 80 layers x 7 tensors x 10 types
    for bpw in (2.5, 3.5, 4.5):
        t0 = time.perf_counter()
        r = solve_plan(m, Budget.from_bpw(bpw, m))
        dt = time.perf_counter() - t0
        print(f"70B-shaped (80x7 tensors, 10 types) target {bpw} bpw: {dt:.3f} s, "
              f"{8 * r.total_bytes / m.n_params:.4f} bpw, predicted {r.predicted_kld:.4g} ({r.method})")


def bench_demo(work: Path, imatrix_path: Path | None) -> None:
    from aqrecipe.output.plan_gguf import write_plan_gguf
    from aqrecipe.evaluate import evaluate
    from aqrecipe.imatrix import compute_imatrix, load_imatrix
    from aqrecipe.models import open_model
    from aqrecipe.plan import PlanSpec, compile_plan
    from aqrecipe.planner import DEFAULT_CANDIDATES, Budget, MeasurementSpec, as_plan_spec, build_report, measure, solve_plan
    from aqrecipe.evaluate.reference import reference_gguf

    work.mkdir(parents=True, exist_ok=True)
    source = open_model("demo")
    if imatrix_path is None:
        from aqrecipe.calibration.data import CalibrationSpec

        imatrix_path = work / "imatrix.gguf"
        if not imatrix_path.exists():
            compute_imatrix("demo", CalibrationSpec(samples=64, seq_len=256, enforce_sample_range=False),
                            work / "imatrix-work", output=imatrix_path)
    imatrix = load_imatrix(imatrix_path)
    t0 = time.perf_counter()
    spec = MeasurementSpec(type="proxy", samples=4, seq_len=128, calibrate_tensors=16)
    m = measure(source, imatrix, DEFAULT_CANDIDATES, spec, work)
    cal = m.calibration
    print(f"measurement: {time.perf_counter() - t0:.1f} s; {cal.n_pairs} (tensor, type) KLD pairs; "
          f"Spearman proxy vs KLD pooled {cal.spearman_pooled:.3f}, within tensor {cal.spearman_within_tensor}; "
          f"slope {cal.slope:.3f}; intercepts {json.dumps({k: round(v, 2) for k, v in cal.intercepts.items()})}")

    def plan_of(**kw):
        return compile_plan(source, PlanSpec(**kw), model_ref=str(source.path))

    plans = {"Q2_K mixture": plan_of(mixture="Q2_K"), "Q4_K_M mixture": plan_of(mixture="Q4_K_M"),
             "uniform Q4_K": plan_of(default="Q4_K")}
    targets = {"planner @ Q2_K size": plans["Q2_K mixture"].total_bytes,
               "planner @ Q4_K_M size": plans["Q4_K_M mixture"].total_bytes,
               "planner @ 5.0 bpw": int(5.0 * m.n_params / 8)}
    for label, nbytes in targets.items():
        r = solve_plan(m, Budget(nbytes))
        plans[label] = compile_plan(source, as_plan_spec(r.types), model_ref=str(source.path))
    reference = reference_gguf("demo")
    rows = []
    for label, plan in plans.items():
        dest = work / (label.replace(" ", "_").replace("@", "at") + ".gguf")
        if not dest.exists():
            write_plan_gguf(plan, dest, imatrix=imatrix)
        q = evaluate(dest, reference=reference, chunks=4, context=512)
        rep = build_report(plan, m, method=label, evaluation={"kld_mean": q.kld_mean, "ppl": q.perplexity_quantized})
        rep.save(work / ("report-" + dest.stem))
        rows.append((label, plan.total_bytes, plan.bits_per_weight, 1 - plan.total_bytes / plan.f16_bytes,
                     rep.predicted_kld, q.kld_mean, q.perplexity_quantized, q.perplexity_original, q.top1_agreement))
        print(f"| {label} | {plan.total_bytes:,} | {plan.bits_per_weight:.3f} | {100 * rows[-1][3]:.1f}% | "
              f"{rep.predicted_kld:.4f} | {q.kld_mean:.4f} | {q.perplexity_quantized:.3f} | "
              f"{q.perplexity_original:.3f} | {q.top1_agreement:.3f} |", flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, help="work folder for the demo-model experiment")
    ap.add_argument("--imatrix", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.demo else logging.WARNING)
    bench_synthetic()
    if args.demo:
        bench_demo(args.demo, args.imatrix)


if __name__ == "__main__":
    main()
