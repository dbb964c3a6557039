"""Benchmark: the out-of-core checkpoint rewrite vs loading the model and calling save_pretrained.

Both paths write the same edited checkpoint (30 H-Neurons at alpha 0) from the same local safetensors
checkpoint; their tensors are byte-identical (tests/test_edit.py). Each run happens in its own child
process, so that peak memory (the child's high-water mark, VmHWM) is not shared between the two; the report gives
wall time (median over reps), peak RSS, the RSS right after imports (what any Python + torch process
costs), and the ratios. Target: out-of-core at most half the peak memory of load + save_pretrained.

Default checkpoint: the embedded SmolLM2-135M-Instruct's converted folder (float32, 538 MB).

    python benchmarks/bench_edit.py             # 3 reps per path
    python benchmarks/bench_edit.py --quick     # 1 rep per path
    python benchmarks/bench_edit.py --folder /path/to/checkpoint --reps 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Run in a fresh child: `python -c CHILD PATH FOLDER OUT NEURONS_JSON`.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def peak_kb():
    # The kernel's high-water mark of this process's memory (VmHWM): ru_maxrss would carry over the
    # parent's peak through fork + exec, and a parent holding a model would mask the child's figure.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401  (same imports in both paths)
from editor.edit.stage import rewrite_safetensors_out_of_core, write_checkpoint
from editor.model.loading import load_model
from editor.model.neuron_set import NeuronSet

path, folder, out, neurons = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
scales = NeuronSet.from_pairs(json.loads(neurons)).scales(0.0)
imports_kb = peak_kb()
start = time.perf_counter()
if path == "out_of_core":
    rewrite_safetensors_out_of_core(folder, out, scales, AutoConfig.from_pretrained(folder))
else:
    out.mkdir()
    write_checkpoint(load_model(folder, device="cpu"), scales, out)
seconds = time.perf_counter() - start
peak = peak_kb()
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024, "imports_rss_mb": imports_kb / 1024}))
"""


def _pairs(num_layers: int, d_ff: int, count: int = 30, seed: int = 0) -> list[tuple[int, int]]:
    import random

    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < count:
        pairs.add((rng.randrange(num_layers), rng.randrange(d_ff)))
    return sorted(pairs)


def _child(path: str, folder: Path, neurons: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-edit-") as tmp:
        out = Path(tmp) / "out"
        proc = subprocess.run([sys.executable, "-c", CHILD, path, str(folder), str(out), neurons],
                              capture_output=True, text=True, env={**_env()})
        if proc.returncode != 0:
            raise RuntimeError(f"{path} child failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["written_mb"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
        shutil.rmtree(out, ignore_errors=True)
    return result


def _env() -> dict:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(folder: str | Path | None = None, reps: int = 3) -> dict:
    """Time and peak RSS of both paths on ``folder`` (default: SmolLM2's converted folder)."""
    from transformers import AutoConfig

    from editor.model.loading import load_model
    from editor.model.registry import get_arch

    if folder is None:
        folder = load_model("smollm2-135m-instruct", device="cpu").folder
    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    arch = get_arch(config)
    neurons = json.dumps(_pairs(arch.num_layers(config), arch.d_ff(config)))
    checkpoint_mb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20
    runs: dict[str, list[dict]] = {"load_save_pretrained": [], "out_of_core": []}
    for _ in range(reps):  # interleaved, so that both paths see the same page-cache state on average
        for path in runs:
            runs[path].append(_child(path, folder, neurons))
    summary = {path: {"seconds": statistics.median(r["seconds"] for r in rs),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "imports_rss_mb": statistics.median(r["imports_rss_mb"] for r in rs),
                      "written_mb": rs[0]["written_mb"]} for path, rs in runs.items()}
    base, ooc = summary["load_save_pretrained"], summary["out_of_core"]
    return {
        "checkpoint": str(folder), "checkpoint_mb": checkpoint_mb, "reps": reps, **summary,
        "time_ratio_out_of_core_vs_load_save": ooc["seconds"] / base["seconds"],
        "peak_rss_ratio_out_of_core_vs_load_save": ooc["peak_rss_mb"] / base["peak_rss_mb"],
        "working_memory_ratio": max(0.0, ooc["peak_rss_mb"] - ooc["imports_rss_mb"])
        / max(1.0, base["peak_rss_mb"] - base["imports_rss_mb"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="a local safetensors checkpoint (default: SmolLM2's converted folder)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one rep per path")
    args = parser.parse_args()
    result = run(args.folder, reps=1 if args.quick else args.reps)
    print(f"checkpoint: {result['checkpoint']} ({result['checkpoint_mb']:.0f} MB), {result['reps']} rep(s) per path")
    print(f"{'path':24s} {'time s':>8s} {'peak RSS MB':>12s} {'after imports MB':>17s}")
    for path in ("load_save_pretrained", "out_of_core"):
        r = result[path]
        print(f"{path:24s} {r['seconds']:8.2f} {r['peak_rss_mb']:12.0f} {r['imports_rss_mb']:17.0f}")
    print(f"out-of-core / load+save_pretrained: time {result['time_ratio_out_of_core_vs_load_save']:.2f}x, "
          f"peak RSS {result['peak_rss_ratio_out_of_core_vs_load_save']:.2f}x, "
          f"working memory above imports {result['working_memory_ratio']:.2f}x (target: peak RSS <= 0.5x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
