"""Scale: an 8B-shaped checkpoint through ``hneurons edit --out-of-core``, and the locate probe at 8B feature
width, on this machine (CPU). Results go to benchmarks/results-scale.json (each part replaces its own key).

``edit``: the checkpoint written by make_big_checkpoint.py (Llama-3.1-8B's configuration, random bf16, 16 GB
in 4 shards). A 300-neuron set spread over all 32 layers (9 or 10 per layer, random indices, seed 0) is
applied with ``hneurons edit --out-of-core`` in weights, ia3 and lora modes, each run under
``/usr/bin/time -v`` (peak RSS, wall time), each output deleted after it is measured. The baseline is a
plain ``cp`` of the same shards, timed the same way, alternating with the weights edit (twice each). The
page cache cannot be dropped system-wide here (no privilege), but the source shards' pages are evicted
before every run (posix_fadvise DONTNEED), so every run reads its source from disk.

``probe``: a synthetic feature store in locate's format (features.json + safetensors shards of fp16
``answer`` / ``other`` rows), 2,000 responses x 2 features x 458,752 neurons (32 x 14,336) = 3.7 GB on
disk, split 1,200 / 400 / 400 (train / validation / test). Each column has its own mean and scale (like
CETT values); 40 planted neurons are higher and 20 lower in hallucinated answers (shift 0.3 to 0.6 sd), the
label rate is 30%. A fresh process runs the path locate runs (training_rows -> fit_probe_path with 24 C
values, standardised in place -> C chosen on validation -> test AUROC) and reports its peak RSS against the
2x-store target and the planted neurons it recovers. liblinear (scikit-learn, the authors' solver) is
compared with the torch path on a 10,000-column subset (the planted columns + random ones), where its
float64 copy fits: time, chosen sets (Jaccard), recovery.

    python benchmarks/scale.py edit --checkpoint /tmp/hn-scale/llama-8b --work /tmp/hn-scale/work
    python benchmarks/scale.py probe --work /tmp/hn-scale/probe
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, env, load_average, machine

RESULTS = REPO / "benchmarks" / "results-scale.json"
LAYERS, D_FF = 32, 14336  # Llama-3.1-8B
N_RESPONSES, SPLITS = 2000, {"train": 1200, "validation": 400, "test": 400}
N_UP, N_DOWN, HALLUCINATED = 40, 20, 0.3
SHIFT_SD = (0.3, 0.6)  # planted shift in hallucinated answers, in units of the column's sd
SHARD_ROWS = 146  # locate's rule: 256 MiB // (2 kinds x 458,752 x 2 bytes)
SUBSET = 10_000  # columns of the liblinear comparison


def _meminfo() -> dict:
    rows = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return {k: round(int(rows[k].split()[0]) / 2**20, 2) for k in ("MemTotal", "MemAvailable", "Cached")}


def _save(key: str, value: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[key] = value
    results["machine"] = machine()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS} [{key}]")


def evict(paths) -> None:
    """Drop ``paths`` from the page cache (posix_fadvise DONTNEED; no privilege needed), after a sync: every
    timed run starts with the source on disk, not in memory."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed(cmd: list[str]) -> dict:
    """Run ``cmd`` under /usr/bin/time -v: wall seconds, peak RSS, exit status, the output's tail."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env(), cwd=REPO, check=False)
    wall = time.perf_counter() - started
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(int(rss.group(1)) / 1024, 1), "load_average": load_average()}


# ----------------------------------------------------------------------------------------------- edit
def neuron_file(path: Path, n: int = 300, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    per_layer = [n // LAYERS + (1 if layer < n % LAYERS else 0) for layer in range(LAYERS)]
    pairs = [(layer, int(j)) for layer, k in enumerate(per_layer)
             for j in sorted(rng.choice(D_FF, size=k, replace=False))]
    path.write_text(json.dumps({"neurons": [{"layer": a, "index": b} for a, b in pairs]}) + "\n")
    return pairs


def cmd_edit(args) -> None:
    src, work = Path(args.checkpoint), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shards = sorted(src.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in shards)
    pairs = neuron_file(work / "neurons.json", args.neurons)
    hneurons = str(Path(sys.executable).with_name("hneurons"))
    out: dict = {"checkpoint": str(src), "checkpoint_bytes": size, "shards": len(shards), "neurons": len(pairs),
                 "layers_with_neurons": len({layer for layer, _ in pairs}), "memory_gb_at_start": _meminfo(),
                 "runs": []}

    def copy(label: str) -> dict:
        dst = work / "copy"
        dst.mkdir()
        run = {"what": label, **_timed(["cp", *map(str, shards), str(dst)])}
        shutil.rmtree(dst)
        return run

    def edit(mode: str) -> dict:
        dst = work / f"out-{mode}"
        run = {"what": f"hneurons edit --out-of-core --mode {mode}", **_timed(
            [hneurons, "edit", "--model", str(src), "--neurons", str(work / "neurons.json"), "--alpha", "0",
             "--mode", mode, "--out-of-core", "--out", str(dst)])}
        manifest = json.loads((dst / "hneurons_edit.json").read_text())
        ver = manifest["verification"]
        run["written_bytes"] = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
        run["verification"] = {"form": ver.get("form"), "passed": ver.get("passed"), "logits": ver.get("logits")}
        if "tensors" in ver:
            t = ver["tensors"]
            run["verification"]["tensors"] = {k: t[k] for k in ("method", "tensors_compared", "bytes_compared",
                                                                "differing", "shards_hashed")}
            run["verification"]["tensors"]["index_consistent"] = t["index"]["consistent"]
            run["verification"]["tensors"]["index_identical_to_source"] = t["index"]["identical_to_source"]
        if "adapter_tensors" in ver:
            run["verification"]["adapter_tensors"] = {k: ver["adapter_tensors"][k] for k in (
                "source_tensors_read", "source_bytes_read", "passed")}
        shutil.rmtree(dst)
        return run

    for step in ("cp", "weights", "cp", "weights", "ia3", "lora"):
        evict(shards)
        run = copy("cp (the shards)") if step == "cp" else edit(step)
        print(json.dumps(run), flush=True)
        out["runs"].append(run)
    copies = [r["wall_s"] for r in out["runs"] if r["what"].startswith("cp")]
    weights = [r["wall_s"] for r in out["runs"] if r["what"].endswith("weights")]
    mean = sum(weights) / len(weights) / max(sum(copies) / len(copies), 0.01)
    out["summary"] = {
        "cp_wall_s": copies, "weights_wall_s": weights, "weights_vs_cp_mean": round(mean, 2),
        "weights_vs_cp_pairs": [round(w / max(c, 0.01), 2) for w, c in zip(weights, copies)],
        "peak_rss_mb_max": {mode: max(r["peak_rss_mb"] for r in out["runs"] if r["what"].endswith(mode))
                            for mode in ("weights", "ia3", "lora")},
        "targets": {"peak_rss_mb_max": 1536, "wall_vs_cp_max": 1.5},
        "note": "the source shards are evicted from the page cache (posix_fadvise DONTNEED) before every run; "
                "runs in the order listed, each output deleted; the machine was shared (load averages per run)",
    }
    _save("edit_8b", out)


# ---------------------------------------------------------------------------------------------- probe
def write_store(folder: Path, seed: int = 0) -> dict:
    """The synthetic fp16 store (see the module docstring), written shard by shard; returns its truth."""
    from editor.formats import FEATURES_FORMAT, FEATURES_MANIFEST

    rng = np.random.default_rng(seed)
    n_features = LAYERS * D_FF
    folder.mkdir(parents=True)
    mean = rng.uniform(0.0, 0.05, n_features).astype(np.float32)
    scale = rng.uniform(0.005, 0.02, n_features).astype(np.float32)
    planted = rng.choice(n_features, N_UP + N_DOWN, replace=False)
    up, down = np.sort(planted[:N_UP]), np.sort(planted[N_UP:])
    shift = rng.uniform(*SHIFT_SD, N_UP + N_DOWN).astype(np.float32) * np.concatenate([np.ones(N_UP), -np.ones(N_DOWN)])
    columns = np.concatenate([up, down])
    y = (rng.random(N_RESPONSES) < HALLUCINATED).astype(int)
    split_of = np.repeat(list(SPLITS), list(SPLITS.values()))
    ids = [f"r{i:04d}" for i in range(N_RESPONSES)]
    shards = []
    for s, start in enumerate(range(0, N_RESPONSES, SHARD_ROWS)):
        rows = list(range(start, min(start + SHARD_ROWS, N_RESPONSES)))
        name = f"shard-{s:05d}.safetensors"
        block = len(rows) * n_features * 2
        header = {"__metadata__": {"ids": json.dumps([ids[i] for i in rows])},
                  "answer": {"dtype": "F16", "shape": [len(rows), n_features], "data_offsets": [0, block]},
                  "other": {"dtype": "F16", "shape": [len(rows), n_features], "data_offsets": [block, 2 * block]}}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)
        with open(folder / name, "wb") as handle:
            handle.write(len(text).to_bytes(8, "little") + text)
            for kind in ("answer", "other"):
                for i in rows:  # one row at a time: the writer holds 2 MB
                    z = rng.standard_normal(n_features, dtype=np.float32)
                    if kind == "answer" and y[i]:
                        z[columns] += shift
                    handle.write((mean + scale * z).astype(np.float16).tobytes())
        shards.append({"file": name, "ids": [ids[i] for i in rows]})
    meta = {"format": FEATURES_FORMAT, "settings": {"synthetic": "benchmarks/scale.py", "seed": seed},
            "num_layers": LAYERS, "d_ff": D_FF, "aggregate": "mean", "store_dtype": "float16",
            "kinds": ["answer", "other"], "shards": shards, "complete": True, "n_records": N_RESPONSES}
    (folder / FEATURES_MANIFEST).write_text(json.dumps(meta))
    truth = {"ids": ids, "y": y.tolist(), "split": split_of.tolist(), "up": up.tolist(), "down": down.tolist()}
    (folder.parent / "truth.json").write_text(json.dumps(truth))
    return truth


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _splits(truth: dict):
    from editor.locate.stage import Split

    out = {}
    for name in SPLITS:
        rows = [i for i, s in enumerate(truth["split"]) if s == name]
        out[name] = Split([truth["ids"][i] for i in rows], np.array([truth["y"][i] for i in rows]), ["r"] * len(rows))
    return out


def _recovery(weight, truth: dict) -> dict:
    import torch

    positive = set(torch.nonzero(weight > 0).flatten().tolist())
    negative = set(torch.nonzero(weight < 0).flatten().tolist())
    up, down = set(truth["up"]), set(truth["down"])
    return {"n_positive": len(positive), "planted_up_found": len(positive & up), "planted_up": len(up),
            "precision": round(len(positive & up) / max(1, len(positive)), 3),
            "planted_down_negative": len(negative & down), "planted_down_positive": len(positive & down)}


def probe_child(store_dir: str, truth_path: str) -> dict:
    """The locate path on the full store, in this (fresh) process."""
    import torch

    from editor import stats
    from editor.locate.features import FeatureStore
    from editor.locate.settings import LocateSettings
    from editor.locate.stage import FittedProbe, fit_probe_path, training_rows

    truth = json.loads(Path(truth_path).read_text())
    splits = _splits(truth)
    started = time.perf_counter()
    store = FeatureStore.open(store_dir)
    x_train, y_train = training_rows(store, splits["train"], "3v1")
    x_val = store.load(splits["validation"].ids, "answer")
    x_test = store.load(splits["test"].ids, "answer")
    loaded = time.perf_counter()
    rss_loaded = _rss_mb()
    settings = LocateSettings(n_C=24)
    path, val_auroc, chosen, std = fit_probe_path(x_train, y_train, x_val, splits["validation"].y, settings,
                                                  in_place=True)
    fitted = time.perf_counter()
    del x_train
    point = path[chosen]
    probe = FittedProbe(point.weight, point.bias, std, point.C)
    test_auroc = stats.auroc(probe.scores(x_test), splits["test"].y)
    return {"train_rows": int(y_train.numel()), "features": store.n_features, "torch_threads": torch.get_num_threads(),
            "load_s": round(loaded - started, 1), "path_s": round(fitted - loaded, 1),
            "total_s": round(time.perf_counter() - started, 1), "peak_rss_mb_after_load": rss_loaded,
            "peak_rss_mb": _rss_mb(), "chosen": {"index": chosen, "C": point.C, "val_auroc": round(val_auroc[chosen], 4),
                                                 "test_auroc": round(test_auroc, 4), **_recovery(point.weight, truth)},
            "path": [{"C": round(p.C, 6), "n_nonzero": p.n_nonzero, "n_positive": p.n_positive,
                      "planted_up_found": _recovery(p.weight, truth)["planted_up_found"], "converged": p.converged,
                      "val_auroc": round(a, 4)} for p, a in zip(path, val_auroc)]}


def liblinear_child(store_dir: str, truth_path: str) -> dict:
    """torch vs liblinear on the planted columns + random ones (the same rows, standardisation and C grid)."""
    import torch

    from editor import stats
    from editor.locate import probe as probe_lib
    from editor.locate.features import FeatureStore
    from editor.locate.stage import Standardiser, training_rows

    truth = json.loads(Path(truth_path).read_text())
    splits = _splits(truth)
    store = FeatureStore.open(store_dir)
    rng = np.random.default_rng(1)
    planted = truth["up"] + truth["down"]
    others = np.setdiff1d(rng.choice(store.n_features, 2 * SUBSET, replace=False), planted)[:SUBSET - len(planted)]
    columns = torch.tensor(np.sort(np.concatenate([planted, others])), dtype=torch.long)
    x, y = training_rows(store, splits["train"], "3v1", columns=columns)
    xv = store.load(splits["validation"].ids, "answer", columns=columns)
    std = Standardiser.fit(x)
    x, xv = std(x), std(xv)
    grid = probe_lib.default_C_grid(x, y, n=24)
    sub_truth = {"up": [int(torch.searchsorted(columns, c)) for c in truth["up"]],
                 "down": [int(torch.searchsorted(columns, c)) for c in truth["down"]]}
    out = {"columns": len(columns), "train_rows": int(y.numel())}
    chosen_sets = {}
    for name, fit in (("torch", lambda: probe_lib.fit_path(x, y, grid)),
                      ("liblinear", lambda: probe_lib.fit_path_liblinear(x.numpy(), y.numpy(), grid))):
        started = time.perf_counter()
        path = fit()
        seconds = time.perf_counter() - started
        val = [stats.auroc((xv @ p.weight + p.bias).numpy(), splits["validation"].y) if p.n_nonzero else 0.5
               for p in path]
        k = probe_lib.select_C(path, val)
        chosen_sets[name] = set(torch.nonzero(path[k].weight > 0).flatten().tolist())
        out[name] = {"path_s": round(seconds, 1), "chosen_C": path[k].C, "val_auroc": round(val[k], 4),
                     **_recovery(path[k].weight, sub_truth)}
    a, b = chosen_sets["torch"], chosen_sets["liblinear"]
    out["jaccard_positive_sets"] = round(len(a & b) / max(1, len(a | b)), 3)
    out["liblinear_over_torch_time"] = round(out["liblinear"]["path_s"] / out["torch"]["path_s"], 1)
    out["peak_rss_mb"] = _rss_mb()
    return out


def _child(kind: str, store: Path, truth: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, kind, str(store), str(truth)], capture_output=True, text=True,
                          env=env(), cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cmd_probe(args) -> None:
    work = Path(args.work)
    store = work / "features"
    started = time.perf_counter()
    if not (store / "features.json").is_file():
        write_store(store)
    written = time.perf_counter() - started
    size = sum(p.stat().st_size for p in store.glob("*.safetensors"))
    out = {"responses": N_RESPONSES, "splits": SPLITS, "features": LAYERS * D_FF, "store_bytes": size,
           "store_dtype": "float16", "planted": {"up": N_UP, "down": N_DOWN, "shift_sd": list(SHIFT_SD)},
           "label_rate": HALLUCINATED, "store_write_s": round(written, 1), "memory_gb_at_start": _meminfo()}
    out["torch_path"] = _child("probe-child", store, work / "truth.json")
    out["torch_path"]["peak_rss_vs_store"] = round(out["torch_path"]["peak_rss_mb"] * 2**20 / size, 2)
    print(json.dumps(out["torch_path"])[:2000], flush=True)
    if not args.skip_liblinear:
        out["liblinear_subset"] = _child("liblinear-child", store, work / "truth.json")
        print(json.dumps(out["liblinear_subset"]), flush=True)
    out["targets"] = {"peak_rss_vs_store_max": 2.0}
    _save("probe_8b_width", out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("probe-child", "liblinear-child"):
        run = probe_child if sys.argv[1] == "probe-child" else liblinear_child
        print(json.dumps(run(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    edit = sub.add_parser("edit", help="the out-of-core edit of the 8B-shaped checkpoint")
    edit.add_argument("--checkpoint", required=True, help="folder written by make_big_checkpoint.py --size 8b")
    edit.add_argument("--work", required=True, help="scratch folder (outputs are deleted after measuring)")
    edit.add_argument("--neurons", type=int, default=300, help="neurons in the set, spread over every layer")
    probe = sub.add_parser("probe", help="the locate probe path at 8B feature width")
    probe.add_argument("--work", required=True, help="scratch folder for the 3.7 GB store")
    probe.add_argument("--skip-liblinear", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    (cmd_edit if args.part == "edit" else cmd_probe)(args)


if __name__ == "__main__":
    main()
