"""hneurons benchmark suite: every stage's cost as ratios measured in one run, and how it scales.

On the embedded default model (SmolLM2-135M-Instruct) and the bundled question sets:

  sampling   tokens/s of the batched, compacting sampler (the collect stage) vs a one-question-at-a-time
             `generate` loop on the same questions and settings, transformers' batched `generate` as the
             middle point, and the share of generations the early stop saves     (bench_sampling.py)
  features   CETT extraction vs the bare forward passes over the same batches; peak RSS of a full
             extraction per question-set size vs one batch's activations           (bench_features.py)
  probe      L1 regularisation path: hneurons' solver vs scikit-learn liblinear (same standardised
             features, same C grid): time, Jaccard of the selected neurons, AUROCs — on real SmolLM2
             CETT features from the end-to-end run and on synthetic SmolLM2-shaped ones (bench_probe.py)
  edit       out-of-core checkpoint rewrite vs load + save_pretrained: time, peak RSS (bench_edit.py)
  e2e        the default recipe end to end (`hneurons run`), seconds per stage          (bench_e2e.py)
  scaling    sampling, features and probe at several sizes: time (expected linear) and peak memory
             (expected flat), drawn in benchmarks/scaling.png

Short stages are repeated (median, with min / max as the machine's noise); ratios are always taken
within this one run, so machine load affects both sides. The machine (CPU, cores, RAM, versions, torch
threads) and the load average at start and end are recorded with the figures.

    python benchmarks/run.py --quick                  # < 5 minutes: small sizes, reduced recipe
    python benchmarks/run.py                          # the full run (about 30 minutes on 2 cores)
    python benchmarks/run.py --stages probe,edit --sizes 200,400 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import bench_e2e  # noqa: E402
import bench_edit  # noqa: E402
import bench_features  # noqa: E402
import bench_probe  # noqa: E402
import bench_sampling  # noqa: E402
from common import MODEL, growth_exponent, load_average, machine  # noqa: E402

STAGES = ("sampling", "features", "probe", "edit", "e2e")

# Sizes per mode. Sampling scales over fewer questions than the other stages: at ~0.4 s per question
# on 2 cores its full-size points alone would take longer than the whole suite is allowed.
PLANS = {
    "full": {"sizes": [250, 500, 1000], "sampling_sizes": [64, 128, 256], "sampling_questions": 32,
             "loops": ("per_question", "per_generation"), "feature_records": 64, "feature_reps": 5,
             "probe_d": 46080, "probe_n_C": 20, "probe_reps": 5, "edit_reps": 3, "quick_e2e": False},
    "quick": {"sizes": [120, 240], "sampling_sizes": [8, 16], "sampling_questions": 8,
              "loops": ("per_question",), "feature_records": 24, "feature_reps": 3,
              "probe_d": 8192, "probe_n_C": 10, "probe_reps": 3, "edit_reps": 1, "quick_e2e": True},
}

TARGETS = {
    "features": ("CETT extraction / bare forward", "<= 1.3x"),
    "probe": ("probe path speed-up vs liblinear (Jaccard >= 0.8, |dAUROC| <= 0.01)", ">= 5x"),
    "sampling": ("batched sampling tokens/s / one-at-a-time loop", ">= 4x"),
    "edit": ("out-of-core edit peak RSS / load + save_pretrained", "<= 0.5x"),
}


def _stage(results: dict, name: str, fn, *args, **kwargs):
    """Run one stage; a failure is recorded (and reported at the end) instead of losing the others."""
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # a benchmark failure must not lose the other stages' figures
        traceback.print_exc()
        value = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(value, dict):
        value.setdefault("benchmark_wall_s", time.perf_counter() - start)
    results[name] = value
    return value


def _probe_scaling(sizes, plan) -> list[dict]:
    rows = []
    for n in sizes:
        r = bench_probe.run(n=n, d=plan["probe_d"], reps=plan["probe_reps"], liblinear_reps=1,
                            n_C=plan["probe_n_C"], verbose=False)
        rows.append({"size": n, "torch_s": r["torch_s"], "liblinear_s": r["liblinear_s"], "speedup": r["speedup"],
                     "jaccard_positive": r["jaccard_positive"], "test_auroc_diff": r["test_auroc_diff"],
                     "selected": r["selected"], "target_met": r["target_met"], "d": r["shape"]["d"]})
        print(f"  probe n={n}: torch {r['torch_s']['median']:.2f} s, liblinear {r['liblinear_s']['median']:.1f} s, "
              f"{r['speedup']:.1f}x, Jaccard {r['jaccard_positive']:.2f}", flush=True)
    return rows


def _real_probe(e2e_out: Path, plan) -> dict:
    npz = e2e_out.parent / "probe_features.npz"
    shapes = bench_e2e.export_probe_features(e2e_out, npz)
    # liblinear at a converged tolerance is the reference for the selection (at scikit-learn's default 1e-4
    # it stops up to 5% above the optimum on these features and selects another C); the default is timed too.
    r = bench_probe.run(features=str(npz), reps=plan["probe_reps"], liblinear_reps=plan["probe_reps"],
                        n_C=plan["probe_n_C"], verbose=True, liblinear_tol=1e-6)
    r["arrays"] = shapes
    r["liblinear_default_tol"] = bench_probe.run(features=str(npz), reps=1, liblinear_reps=1, n_C=plan["probe_n_C"],
                                                 verbose=True, liblinear_tol=1e-4)
    return r


def targets(results: dict) -> list[dict]:
    """Each target with its measured figure (None where the stage did not run or failed)."""
    out = []

    def add(stage, measured, met, detail=""):
        name, target = TARGETS[stage]
        out.append({"stage": stage, "what": name, "target": target, "measured": measured, "met": met,
                    "detail": detail})

    f = results.get("features", {})
    if "ratio_cett_vs_bare" in f:
        add("features", round(f["ratio_cett_vs_bare"], 3), f["target_met"],
            f"vs a full-logits forward {f['ratio_cett_vs_bare_full_logits']:.2f}x")
    p = results.get("probe", {})
    for key, label in (("real", "real SmolLM2 features"), ("synthetic", "synthetic, SmolLM2-shaped")):
        r = p.get(key) or {}
        if "speedup" in r:
            add("probe", round(r["speedup"], 1), r["target_met"],
                f"{label} ({r['shape']['n_train']} x {r['shape']['d']}): Jaccard {r['jaccard_positive']:.2f}, "
                f"|dAUROC| {r['test_auroc_diff']:.4f}")
    s = results.get("sampling", {})
    if "speedup_vs_loop" in s:
        add("sampling", round(s["speedup_vs_loop"], 2), s["target_met"],
            f"hf batched {s['speedup_hf_batched_vs_loop']:.1f}x, compaction {s['speedup_compaction_vs_hf_batched']:.2f}x, "
            f"early stop saves {s['early_stop_generations_saved']:.0%} of generations")
    e = results.get("edit", {})
    if "peak_rss_ratio_out_of_core_vs_load_save" in e:
        ratio = e["peak_rss_ratio_out_of_core_vs_load_save"]
        add("edit", round(ratio, 3), ratio <= 0.5, f"time {e['time_ratio_out_of_core_vs_load_save']:.2f}x")
    return out


def scaling_summary(results: dict) -> dict:
    """Per stage: sizes, seconds, and the growth exponent (log-log slope; 1.0 = linear)."""
    sc = results.get("scaling", {})
    out = {}
    samp = sc.get("sampling")
    if isinstance(samp, list) and samp:
        sizes = [r["size"] for r in samp]
        out["sampling"] = {"sizes": sizes, "seconds": [r["seconds"] for r in samp],
                           "time_exponent": growth_exponent(sizes, [r["seconds"] for r in samp])}
    feats = (results.get("features") or {}).get("memory")
    if isinstance(feats, list) and feats:
        sizes = [r["size"] for r in feats]
        out["features"] = {"sizes": sizes, "seconds": [r["seconds"] for r in feats],
                           "time_exponent": growth_exponent(sizes, [r["seconds"] for r in feats]),
                           "peak_rss_mb": [r["peak_rss_mb"] for r in feats],
                           "growth_mb": [r["growth_mb"] for r in feats]}
    probe = sc.get("probe")
    if isinstance(probe, list) and probe:
        sizes = [r["size"] for r in probe]
        out["probe"] = {"sizes": sizes, "torch_s": [r["torch_s"]["median"] for r in probe],
                        "liblinear_s": [r["liblinear_s"]["median"] for r in probe],
                        "torch_exponent": growth_exponent(sizes, [r["torch_s"]["median"] for r in probe]),
                        "liblinear_exponent": growth_exponent(sizes, [r["liblinear_s"]["median"] for r in probe])}
    return out


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = [("sampling", "seconds", "collect (sampling + judging)"),
             ("features", "seconds", "CETT feature extraction"),
             ("probe", "torch_s", "probe path (hneurons)"),
             ("probe", "liblinear_s", "probe path (liblinear)")]
    for stage, key, label in lines:
        if stage in summary:
            left.plot(summary[stage]["sizes"], summary[stage][key], "o-", label=label)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("questions (sampling) / records (features) / training rows (probe)")
    left.set_ylabel("wall time (s)")
    left.set_title("time vs size (log-log; slope 1 = linear)")
    left.legend(fontsize=8)
    if "features" in summary:
        f = summary["features"]
        right.plot(f["sizes"], f["peak_rss_mb"], "o-", label="peak RSS of the extraction process")
        right.plot(f["sizes"], [p - g for p, g in zip(f["peak_rss_mb"], f["growth_mb"])], "s--",
                   label="RSS before extraction (model loaded)")
        right.set_ylim(0, max(f["peak_rss_mb"]) * 1.2)
        right.legend(fontsize=8)
    right.set_xlabel("records")
    right.set_ylabel("MB")
    right.set_title("feature extraction memory vs size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def failures(results: dict) -> list[str]:
    """Names of the stages (and sub-stages) that recorded an error."""
    failed = []
    for key, value in results.items():
        if isinstance(value, dict):
            if "error" in value:
                failed.append(key)
            elif key in ("probe", "scaling"):
                failed += [f"{key}.{k}" for k, v in value.items() if isinstance(v, dict) and "error" in v]
    return failed


def print_summary(results: dict) -> None:
    print("\n" + "=" * 100)
    m = results["machine"]
    print(f"hneurons benchmarks ({results['mode']}): {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB, torch "
          f"{m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}; load average "
          f"{results['load_average']['start']} -> {results['load_average']['end']}")
    print("=" * 100)
    print(f"{'stage':<10}{'measured':>10}  {'target':<9}{'met':<5} what / detail")
    for t in results["targets"]:
        print(f"{t['stage']:<10}{t['measured']:>10}  {t['target']:<9}{'yes' if t['met'] else 'NO':<5} "
              f"{t['what']}; {t['detail']}")
    e = results.get("e2e") or {}
    if "stage_seconds" in e:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in e["stage_seconds"].items())
        print(f"{'e2e':<10}{e['wall_s']:>9.0f}s  {'':<9}{'':<5} {e['recipe']}: {stages}")
    for stage, s in results.get("scaling_summary", {}).items():
        exps = {k: v for k, v in s.items() if k.endswith("exponent")}
        print(f"scaling   {stage:<9} sizes {s['sizes']}: " + ", ".join(
            f"{k.replace('_exponent', '').replace('time', 'wall')} time ~ size^{v:.2f}" for k, v in exps.items() if v is not None)
              + (f"; peak RSS {', '.join(f'{x:.0f}' for x in s['peak_rss_mb'])} MB" if "peak_rss_mb" in s else ""))
    failed = failures(results)
    if failed:
        print(f"FAILED stages: {', '.join(failed)} (see the JSON)")
    print(f"total wall time {results['wall_s']:.0f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and a reduced recipe (< 5 minutes)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated sizes for the features and probe scaling (default 250,500,1000; "
                             "quick: 120,240)")
    parser.add_argument("--sampling-sizes", default=None,
                        help="question-set sizes for the sampling scaling (default 64,128,256; quick: 8,16)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"subset of {','.join(STAGES)}")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/results.json; quick: "
                                                     "benchmarks/results-quick.json)")
    parser.add_argument("--keep-e2e", default=None, metavar="DIR",
                        help="leave the end-to-end run's output (the recipe's run folder) in DIR/out")
    parser.add_argument("--png", default=None, help="scaling plot (default: next to --out, scaling*.png)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = dict(PLANS[mode])
    if args.sizes:
        plan["sizes"] = [int(x) for x in args.sizes.split(",")]
    if args.sampling_sizes:
        plan["sampling_sizes"] = [int(x) for x in args.sampling_sizes.split(",")]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    out = Path(args.out) if args.out else HERE / ("results.json" if mode == "full" else "results-quick.json")
    png = Path(args.png) if args.png else out.with_name("scaling.png" if mode == "full" else "scaling-quick.png")

    started = time.perf_counter()
    results: dict = {"mode": mode, "command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
                     "machine": machine(), "load_average": {"start": load_average()},
                     "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}, "stages": stages}
    results["scaling"] = {}
    lm = None
    if {"sampling", "features"} & set(stages):
        from editor.model.loading import load_model

        lm = load_model(MODEL, device="cpu")
    if "sampling" in stages:
        _stage(results, "sampling", bench_sampling.run, lm, plan["sampling_questions"], loops=plan["loops"])
        _stage(results["scaling"], "sampling", bench_sampling.scale, lm, plan["sampling_sizes"])
    if "features" in stages:
        feats = _stage(results, "features", bench_features.run, lm, plan["feature_records"],
                       reps=plan["feature_reps"])
        if "error" not in feats:
            mem = _stage(results, "features_memory", bench_features.memory, plan["sizes"])
            if isinstance(mem, list):
                feats["memory"] = mem
                results.pop("features_memory")
                bench_features.print_memory(mem)
    if "probe" in stages:
        results["probe"] = {}
        rows = _stage(results["scaling"], "probe", _probe_scaling, plan["sizes"], plan)
        if isinstance(rows, list) and rows:
            middle = rows[len(rows) // 2]
            results["probe"]["synthetic"] = {**middle, "shape": {"n_train": middle["size"], "d": middle["d"]}}
    if "edit" in stages:
        _stage(results, "edit", bench_edit.run, reps=plan["edit_reps"])
    if "e2e" in stages:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            keep = Path(args.keep_e2e) if args.keep_e2e else Path(tmp)
            e2e = _stage(results, "e2e", bench_e2e.run, quick=plan["quick_e2e"], keep=keep)
            if "probe" in stages and "error" not in e2e:
                _stage(results["probe"], "real", _real_probe, keep / "out", plan)
    results["load_average"]["end"] = load_average()
    results["targets"] = targets(results)
    results["scaling_summary"] = scaling_summary(results)
    results["wall_s"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if results["scaling_summary"]:
        plot(results["scaling_summary"], png)
        results["png"] = str(png)
    print_summary(results)
    print(f"wrote {out}" + (f" and {png}" if results["scaling_summary"] else ""))
    return 1 if failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
