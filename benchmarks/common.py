"""Helpers shared by the benchmark scripts: repetition statistics, the machine's description, child
processes that report their own peak memory, and the default recipe's settings."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "smollm2-135m-instruct.yaml"
MODEL = "smollm2-135m-instruct"


def spread(values) -> dict:
    """Median with min / max (the machine's noise) over repetitions."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "reps": len(values)}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_child(code: str, *args: str, timeout: float | None = None) -> dict:
    """Run ``python -c code args`` in a fresh process; its last stdout line is a JSON object."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """What the figures were measured on."""
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        import sklearn

        info["scikit_learn"] = sklearn.__version__
    except ImportError:
        pass
    return info


def recipe_sampling() -> dict:
    """The default recipe's collect settings (samples, temperature, top-p, top-k, max new tokens, batch)."""
    from editor.pipeline.recipe import load_recipe

    c = load_recipe(RECIPE).collect
    return {"samples": c.samples, "temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k,
            "max_new_tokens": c.max_new_tokens, "batch_size": c.batch_size, "seed": c.seed}


def growth_exponent(sizes, values) -> float | None:
    """Slope of log(value) against log(size) between the smallest and largest size (1.0 = linear)."""
    import math

    pairs = [(s, v) for s, v in zip(sizes, values) if v and v > 0]
    if len(pairs) < 2:
        return None
    (s0, v0), (s1, v1) = pairs[0], pairs[-1]
    return math.log(v1 / v0) / math.log(s1 / s0)
