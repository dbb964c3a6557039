"""Benchmark: the eval stage's lm-eval model class `hneurons` vs lm-eval's `hf`, as ratios within one run.

Two measurements on the embedded SmolLM2-135M-Instruct (CPU), both on the same items with the same numbers:

1. **scoring**: the bundled multiple-choice / margin tasks (hneurons_knowledge_mc and the three behaviour _mc
   tasks), ``--items`` per task: forward tokens and seconds of prompt-shared scoring (`hneurons`) vs lm-eval's
   per-choice scoring (`hf`'s own loop, run as ``HneuronsLM(prefix_sharing=False)`` so that its tokens are
   counted); the largest per-request log-likelihood difference and whether every choice ranks alike.
   Target: >= 2x fewer tokens and >= 2x less time.
2. **eval stage**: the default recipe's eval section (``tasks: [hneurons]``, ``limit: 24``, 1 control, 16 KL
   prompts), base vs a run-time edit of ``--neurons`` (default: 40 random neurons, seed 0, if no neuron file is
   given) at alpha 0, once with ``lm_eval_model: hf`` and once with ``hneurons`` (the results cache off for
   both, so each runs everything): seconds, and whether every metric agrees (0/1 metrics exactly, margins to
   1e-4). Target: >= 2.5x faster.

    python benchmarks/bench_eval.py                   # 100 items per MC task, then the eval stage
    python benchmarks/bench_eval.py --quick           # 30 items per MC task, then the eval stage
    python benchmarks/bench_eval.py --skip-stage --items 549
Writes benchmarks/results-eval.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, REPO, load_average, machine  # noqa: E402

MC_TASKS = ["hneurons_knowledge_mc", "hneurons_false_premise_mc", "hneurons_misleading_context_mc",
            "hneurons_sycophancy_mc"]


def scoring(lm, items: int, batch_size: int) -> dict:
    from lm_eval import simple_evaluate

    from editor.evaluate.lm_eval_model import HneuronsLM
    from editor.evaluate.lm_eval_run import task_manager
    from editor.evaluate.settings import EvalSettings

    settings = EvalSettings(tasks=MC_TASKS, batch_size=batch_size, kl=False)
    manager = task_manager(settings)
    runs = {}
    for name, sharing in (("per_choice", False), ("prompt_shared", True)):
        model = HneuronsLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size,
                           prefix_sharing=sharing)
        start = time.perf_counter()
        out = simple_evaluate(model=model, tasks=MC_TASKS, task_manager=manager, limit=items, log_samples=True,
                              apply_chat_template=True, bootstrap_iters=0)
        runs[name] = {"seconds": time.perf_counter() - start, "tokens": model.forward_tokens, "out": out}
    a, b = runs["per_choice"]["out"], runs["prompt_shared"]["out"]
    diff, same_rank, requests = 0.0, True, 0
    for task in MC_TASKS:
        for x, y in zip(a["samples"][task], b["samples"][task]):
            lx = [float(r[0][0]) for r in x["resps"]]
            ly = [float(r[0][0]) for r in y["resps"]]
            requests += len(lx)
            diff = max(diff, max(abs(p - q) for p, q in zip(lx, ly)))
            same_rank &= max(range(len(lx)), key=lx.__getitem__) == max(range(len(ly)), key=ly.__getitem__)
    same_metrics = all(a["results"][t].get("acc,none") == b["results"][t].get("acc,none") for t in MC_TASKS)
    per, shared = runs["per_choice"], runs["prompt_shared"]
    return {"tasks": MC_TASKS, "items_per_task": items, "requests": requests, "batch_size": batch_size,
            "per_choice": {"seconds": round(per["seconds"], 2), "forward_tokens": per["tokens"]},
            "prompt_shared": {"seconds": round(shared["seconds"], 2), "forward_tokens": shared["tokens"]},
            "token_ratio": round(per["tokens"] / shared["tokens"], 2),
            "time_ratio": round(per["seconds"] / shared["seconds"], 2),
            "max_abs_loglikelihood_difference": diff, "same_argmax_every_item": same_rank,
            "same_accuracy": same_metrics}


def eval_stage(lm, neurons: str | None, tmp: Path) -> dict:
    from editor.evaluate.stage import evaluate
    from editor.model.neuron_set import NeuronSet
    from editor.pipeline.recipe import load_recipe

    from common import RECIPE

    section = load_recipe(RECIPE).eval.model_dump()
    if neurons is None:
        import numpy as np

        rng = np.random.default_rng(0)
        flat = rng.choice(lm.num_layers * lm.d_ff, size=40, replace=False)
        nset = NeuronSet.from_pairs([(int(f) // lm.d_ff, int(f) % lm.d_ff) for f in flat])
        what = "40 random neurons (seed 0)"
    else:
        nset, what = NeuronSet.load(neurons), neurons
    runs = {}
    for name in ("hf", "hneurons"):
        settings = {**section, "lm_eval_model": name, "results_cache": False}
        start = time.perf_counter()
        report = evaluate(lm, neurons=nset, alpha=0.0, settings=settings, out=tmp / name)
        runs[name] = {"seconds": time.perf_counter() - start, "metrics": report.metrics}
    agree, worst = True, 0.0
    for x, y in zip(runs["hf"]["metrics"], runs["hneurons"]["metrics"]):
        for role in ("base", "edited"):
            p, q = x.get(role), y.get(role)
            if p is None or q is None:
                continue
            gap = abs(float(p) - float(q))
            worst = max(worst, gap)
            agree &= gap <= (1e-4 if "margin" in x["metric"] else 0.0)
    return {"recipe": str(RECIPE.relative_to(REPO)), "settings": {k: section[k] for k in ("tasks", "limit", "controls",
                                                                                          "kl_max_prompts")},
            "edited": f"{what} at alpha 0 (run-time)", "hf_seconds": round(runs["hf"]["seconds"], 1),
            "hneurons_seconds": round(runs["hneurons"]["seconds"], 1),
            "time_ratio": round(runs["hf"]["seconds"] / runs["hneurons"]["seconds"], 3),
            "metrics_agree": agree, "largest_metric_difference": worst, "rows": len(runs["hf"]["metrics"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100, help="items per MC task in the scoring comparison")
    parser.add_argument("--quick", action="store_true", help="30 items per MC task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--neurons", help="neuron file for the eval-stage comparison (default: 40 random neurons)")
    parser.add_argument("--skip-stage", action="store_true", help="only the scoring comparison")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results-eval.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from editor.model.loading import load_model

    started, load_start = time.time(), load_average()
    lm = load_model(MODEL, device="cpu")
    result = {"benchmark": "eval", "machine": machine(), "load_average_start": load_start,
              "scoring": scoring(lm, 30 if args.quick else args.items, args.batch_size)}
    print(json.dumps({"scoring": result["scoring"]}, indent=2), flush=True)
    if not args.skip_stage:
        with tempfile.TemporaryDirectory() as tmp:
            result["eval_stage"] = eval_stage(lm, args.neurons, Path(tmp))
        print(json.dumps({"eval_stage": result["eval_stage"]}, indent=2), flush=True)
    result["targets"] = {
        "prompt-shared scoring: tokens >= 2x fewer": result["scoring"]["token_ratio"] >= 2,
        "prompt-shared scoring: time >= 2x less": result["scoring"]["time_ratio"] >= 2}
    if "eval_stage" in result:
        result["targets"]["eval stage >= 2.5x faster, same numbers"] = (
            result["eval_stage"]["time_ratio"] >= 2.5 and result["eval_stage"]["metrics_agree"])
    result["load_average_end"], result["wall_s"] = load_average(), round(time.time() - started, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for target, met in result["targets"].items():
        print(f"{'met   ' if met else 'MISSED'} {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
