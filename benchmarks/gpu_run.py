"""The GPU path, timed: the default recipe's collect + locate on SmolLM2 in bfloat16 on one CUDA GPU.

Called by benchmarks/gpu.sh (which installs the wheels first). Batch sizes are ``auto`` (chosen from the
free GPU memory, editor/model/batching.py); ``--backend vllm`` samples with vLLM when it is installed. Prints
the generation throughput (tokens/s) and every stage's wall time, and writes them to OUT/gpu_results.json.

Equivalent CLI (fixed batch sizes):
    hneurons collect --model smollm2-135m-instruct --device cuda --dtype bfloat16 --data bundled:facts \\
        --samples 5 --temperature 0.5 --batch-size 256 --out OUT/collect
    hneurons locate --model smollm2-135m-instruct --device cuda --dtype bfloat16 --responses OUT/collect \\
        --out OUT/locate --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/hneurons-gpu")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", default="train=1200,validation=400,test=400",
                        help="questions per split (bundled facts); the default fits < 8 minutes on one H100")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--batch-size", default="auto", help="collect batch size (auto: from free GPU memory)")
    parser.add_argument("--feature-batch-size", default="auto")
    parser.add_argument("--device", default="cuda", help="cuda (the point of this script); cpu for a dry run")
    args = parser.parse_args()

    import torch

    from editor.collect.settings import CollectSettings
    from editor.collect.stage import collect, gather_questions, parse_limit
    from editor.locate.settings import LocateSettings
    from editor.locate.stage import locate
    from editor.model.loading import load_model

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: this script measures the GPU path", file=sys.stderr)
        return 2
    out = Path(args.out)
    times: dict[str, float] = {}
    start = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype="bfloat16")
    times["load"] = time.perf_counter() - start
    questions, data = gather_questions(["bundled:facts"], ["train", "validation", "test"], parse_limit(args.limit))
    settings = CollectSettings(samples=args.samples, temperature=args.temperature, batch_size=args.batch_size)
    start = time.perf_counter()
    result = collect(lm, questions, out / "collect", settings=settings, data=data, overwrite=True,
                     backend=args.backend)
    times["collect"] = time.perf_counter() - start
    start = time.perf_counter()
    located = locate(lm, out / "collect", out / "locate", LocateSettings(batch_size=args.feature_batch_size))
    times["locate"] = time.perf_counter() - start
    features = json.loads((out / "locate" / "features" / "features.json").read_text())
    g = result.manifest["generations"]
    report = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "torch": torch.__version__, "backend": args.backend,
        "questions": len(questions), "samples": args.samples,
        "collect_batch_size": result.manifest["sampling"]["batch_size"],
        "generations": g["generations"], "generated_tokens": g["generated_tokens"],
        "tokens_per_s": g["generated_tokens"] / times["collect"],
        "early_stop_saving": result.manifest["early_stop_saving"],
        "feature_records": features.get("n_records"), "feature_seconds": features.get("wall_time_s"),
        "h_neurons": located.neurons["count"], "test_auroc": located.report["test"]["probe"]["auroc"],
        "stage_seconds": times,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
    }
    (out / "gpu_results.json").write_text(json.dumps(report, indent=1))
    print(f"\nGPU path on {report['device']} (torch {report['torch']}, backend {args.backend}, bf16):")
    print(f"  collect: {report['questions']} questions x (greedy + {args.samples}), batch {report['collect_batch_size']}"
          f" (auto), {report['generated_tokens']} tokens in {times['collect']:.1f} s = {report['tokens_per_s']:.0f} "
          f"tokens/s; early stop saved {report['early_stop_saving']:.0%} of generations")
    print(f"  locate:  {times['locate']:.1f} s (CETT features of {report['feature_records']} responses in "
          f"{report['feature_seconds']} s); {report['h_neurons']} H-Neurons, test AUROC {report['test_auroc']:.3f}")
    print(f"  load {times['load']:.1f} s; peak GPU memory {report['peak_gpu_memory_gb'] or 0:.1f} GB; "
          f"wrote {out / 'gpu_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
