"""Benchmark: CETT feature extraction vs the bare forward passes it rides on, and its peak memory.

Records: bundled facts (train split, a relation-balanced subset), each prompt (the chat template, as
collect builds it) followed by the first gold answer's tokens as the response; features are the paper's
CETT means over the response and over the other tokens (the default settings of locate).

* Time: :func:`editor.locate.features.cett_features` (hooks on every layer's down-projection, reduction to
  [batch, 2, d_ff], host copy) vs the same forward passes without hooks (``forward_batches``: same
  batches, same right padding, same inputs). The limit of the ratio is 1.0x. Both ask the model for the
  last position's logits only (CETT needs none); ``bare_full_logits`` is the forward a naive extractor
  runs (logits at every position), for reference. Repetitions are interleaved, so machine load hits
  both sides alike; figures are medians with min / max.
* Memory: :func:`editor.locate.features.extract_features` (fp16 shards streamed to disk) in a fresh child
  process per size; its peak RSS is read from the kernel's high-water mark (VmHWM), reset after the
  model is loaded and one batch has run, so the growth measures extraction alone. Reference: the size
  of one batch's activations, batch x seq x d_ff x layers x 4 bytes (what holding every layer's
  activations for one batch would cost); flat across sizes means memory does not grow with questions.

    python benchmarks/bench_features.py --records 64
    python benchmarks/bench_features.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from common import MODEL, run_child, spread, timed


def records_for(lm, n: int, seed: int = 0) -> list[dict]:
    """``n`` teacher-forcing records: prompt + first gold answer (as a collected representative)."""
    from editor.collect.stage import gather_questions
    from editor.data.prompting import build_prompt

    qs, _ = gather_questions(["bundled:facts"], ["train"], n, seed=seed)
    records = []
    for q in qs:
        prompt = build_prompt(lm.tokenizer, q.question).input_ids
        answer = lm.tokenizer(q.answers[0], add_special_tokens=False)["input_ids"]
        ids = list(prompt) + list(answer)
        records.append({"id": q.id, "representative": {
            "input_ids": ids, "prompt_len": len(prompt), "response_start": len(prompt), "response_end": len(ids),
            "answer_start": len(prompt), "answer_end": len(ids)}})
    return records


@torch.no_grad()
def bare(lm, records, batch_size: int, full_logits: bool = False) -> None:
    from editor.locate.features import forward_batches

    for _, inputs, _, _ in forward_batches(lm, records, batch_size, "response"):
        if full_logits:
            inputs = {k: v for k, v in inputs.items() if k != "logits_to_keep"}
        lm.model(**inputs)


def cett(lm, records, batch_size: int) -> None:
    from editor.locate.features import cett_features

    for _ in cett_features(lm, records, "mean", batch_size, "response"):
        pass


def activation_bytes(lm, records, batch_size: int) -> int:
    """batch x seq x d_ff x layers x 4 bytes for the largest batch (the reference of the memory figure)."""
    widest = max(max(len(r["representative"]["input_ids"]) for r in records[i:i + batch_size]) * len(
        records[i:i + batch_size]) for i in range(0, len(records), batch_size))
    return widest * lm.d_ff * lm.num_layers * 4


def run(lm=None, n_records: int = 64, batch_size: int = 8, reps: int = 3, verbose: bool = True) -> dict:
    """Interleaved repetitions of bare forward / CETT extraction / bare forward with full logits."""
    from editor.model.loading import load_model

    lm = lm or load_model(MODEL, device="cpu")
    records = records_for(lm, n_records)
    cett(lm, records[:batch_size], batch_size)  # warm-up (first-call allocations, lazy inits)
    times = {"bare": [], "cett": [], "bare_full_logits": []}
    for _ in range(reps):
        times["bare"].append(timed(lambda: bare(lm, records, batch_size))[1])
        times["cett"].append(timed(lambda: cett(lm, records, batch_size))[1])
        times["bare_full_logits"].append(timed(lambda: bare(lm, records, batch_size, full_logits=True))[1])
    ratios = [c / b for c, b in zip(times["cett"], times["bare"])]
    tokens = sum(len(r["representative"]["input_ids"]) for r in records)
    result = {
        "records": n_records, "batch_size": batch_size, "tokens": tokens,
        "mean_seq_len": tokens / n_records, "torch_threads": torch.get_num_threads(),
        "seconds": {k: spread(v) for k, v in times.items()},
        "ratio_cett_vs_bare": statistics.median(times["cett"]) / statistics.median(times["bare"]),
        "ratio_cett_vs_bare_per_rep": spread(ratios),
        "ratio_cett_vs_bare_full_logits": statistics.median(times["cett"]) / statistics.median(times["bare_full_logits"]),
        "records_per_s": n_records / statistics.median(times["cett"]),
    }
    result["target_met"] = result["ratio_cett_vs_bare"] <= 1.3
    if verbose:
        print_table(result)
    return result


# A fresh process per size: load, one warm-up batch, reset the RSS high-water mark, extract, report.
CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from bench_features import activation_bytes, cett, records_for
from editor.locate.features import FeatureSettings, extract_features
from editor.model.loading import load_model

n, batch_size, model = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

lm = load_model(model, device="cpu")
records = records_for(lm, n)
cett(lm, records[:batch_size], batch_size)
rss_before = status("VmRSS")
try:
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
    start = time.perf_counter()
    store = extract_features(lm, records, Path(tmp) / "f", FeatureSettings(batch_size=batch_size), progress=False)
    seconds = time.perf_counter() - start
    written = sum(p.stat().st_size for p in (Path(tmp) / "f").glob("*.safetensors"))
peak = status("VmHWM")
print(json.dumps({"size": n, "seconds": seconds, "records_per_s": n / seconds, "rss_before_mb": rss_before,
                  "peak_rss_mb": peak, "growth_mb": peak - rss_before, "hwm_reset": reset,
                  "written_mb": written / 2**20, "batch_activations_mb": activation_bytes(lm, records, batch_size) / 2**20}))
"""


def memory(sizes, batch_size: int = 8) -> list[dict]:
    """Peak RSS and wall time of a full extraction per size, each in its own process."""
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    return [run_child(CHILD, str(n), str(batch_size), MODEL, here) for n in sizes]


def print_table(r: dict) -> None:
    print(f"\nfeatures: {r['records']} records (mean {r['mean_seq_len']:.0f} tokens), batch {r['batch_size']}, "
          f"torch threads {r['torch_threads']}")
    print(f"{'pass':<20}{'median s':>10}{'min s':>8}{'max s':>8}")
    for name, t in r["seconds"].items():
        print(f"{name:<20}{t['median']:>10.2f}{t['min']:>8.2f}{t['max']:>8.2f}")
    q = r["ratio_cett_vs_bare_per_rep"]
    print(f"CETT / bare forward {r['ratio_cett_vs_bare']:.2f}x (per rep {q['min']:.2f}-{q['max']:.2f}; target <= 1.3x); "
          f"CETT / full-logits forward {r['ratio_cett_vs_bare_full_logits']:.2f}x")


def print_memory(rows: list[dict]) -> None:
    print(f"{'records':>8}{'seconds':>9}{'rec/s':>7}{'RSS before MB':>15}{'peak MB':>9}{'growth MB':>11}"
          f"{'1-batch act. MB':>17}")
    for m in rows:
        print(f"{m['size']:>8}{m['seconds']:>9.1f}{m['records_per_s']:>7.1f}{m['rss_before_mb']:>15.0f}"
              f"{m['peak_rss_mb']:>9.0f}{m['growth_mb']:>11.1f}{m['batch_activations_mb']:>17.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--memory-sizes", default="250,1000", help="record counts for the peak-memory children")
    parser.add_argument("--quick", action="store_true", help="24 records, 2 reps, memory at 16 and 48 records")
    args = parser.parse_args()
    if args.quick:
        args.records, args.reps, args.memory_sizes = 24, 2, "16,48"
    result = run(n_records=args.records, batch_size=args.batch_size, reps=args.reps)
    result["memory"] = memory([int(s) for s in args.memory_sizes.split(",")], args.batch_size)
    print_memory(result["memory"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
