"""Benchmark: the default recipe end to end (`hneurons run`), wall time per stage.

The recipe (recipes/smollm2-135m-instruct.yaml) runs in a child process into a temporary output folder;
the stage times are those `hneurons run` records in OUT/run_state.json (``stages.<name>.seconds``), the
total is the child's wall time (model loading and imports included) and its peak RSS. ``--quick`` runs
a reduced copy of the recipe (fewer questions and samples, one edit mode, a small eval) that exercises
every stage in about a minute.

The finished folder's CETT features can feed the probe benchmark with real SmolLM2 features
(:func:`export_probe_features`), so the path is also timed on the data it is made for.

    python benchmarks/bench_e2e.py --quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import yaml
from common import RECIPE, run_child

QUICK = {
    "collect": {"limit": {"train": 48, "validation": 24, "test": 24}, "samples": 2},
    "locate": {"random_draws": 2, "bootstrap": 100},
    "edit": {"modes": ["weights"]},
    "eval": {"tasks": ["hneurons_facts"], "limit": 4, "controls": 0, "kl_prompts": 2, "bootstrap": 50},
}

# The pipeline in a fresh process; its last line reports wall time and the process's peak RSS.
CHILD = r"""
import json, sys, time
from pathlib import Path
start = time.perf_counter()
from editor.cli import main
code = main(["run", sys.argv[1], "--no-progress"])
# VmHWM, not ru_maxrss: the latter carries the parent's peak over fork + exec
peak = [int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")][0]
print(json.dumps({"exit": code, "seconds": time.perf_counter() - start, "peak_rss_mb": peak / 1024}))
"""


def write_recipe(folder: Path, quick: bool) -> Path:
    """The default recipe with its output in ``folder`` (reduced with ``quick``)."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["output"] = str(folder / "out")
    if quick:
        for section, values in QUICK.items():
            recipe.setdefault(section, {}).update(values)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run(quick: bool = False, keep: Path | None = None, verbose: bool = True) -> dict:
    """Run the recipe; ``keep``: a folder to leave the output in (else a temporary one, removed)."""
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        recipe = write_recipe(folder, quick)
        child = run_child(CHILD, str(recipe))
        state = json.loads((folder / "out" / "run_state.json").read_text())
        stages = {name: s["seconds"] for name, s in state["stages"].items()}
        collect = json.loads((folder / "out" / "collect" / "collect.json").read_text())
        result = {
            "recipe": str(RECIPE.relative_to(RECIPE.parent.parent)) + (" (reduced: --quick)" if quick else ""),
            "reduced_settings": QUICK if quick else None,
            "questions": collect["n_questions"],
            "stage_seconds": stages,
            "stages_total_s": sum(stages.values()),
            "wall_s": child["seconds"],
            "overhead_s": child["seconds"] - sum(stages.values()),
            "peak_rss_mb": child["peak_rss_mb"],
            "collect_generations": collect["generations"],
            "early_stop_saving": collect["early_stop_saving"],
            "output": str(folder / "out") if keep else None,
        }
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if verbose:
        print_table(result)
    return result


def export_probe_features(out: Path, npz: Path) -> dict:
    """The probe's real training data from a finished run: 3-vs-1 rows of the train split, answer rows of
    validation and test (as locate builds them), saved as the .npz that bench_probe.py reads."""
    import numpy as np

    from editor.collect.stage import load_responses
    from editor.locate.features import FeatureStore
    from editor.locate.stage import splits_of, training_rows

    records, _ = load_responses(out / "collect")
    facts = splits_of(records, False)
    store = FeatureStore.open(out / "locate" / "features")
    x_train, y_train = training_rows(store, facts["train"], "3v1")
    arrays = {"X_train": x_train.numpy(), "y_train": y_train.numpy().astype(np.int64)}
    for split in ("validation", "test"):
        name = "val" if split == "validation" else "test"
        arrays[f"X_{name}"] = store.load(facts[split].ids, "answer").numpy()
        arrays[f"y_{name}"] = facts[split].y.astype(np.int64)
    np.savez(npz, **arrays)
    return {k: list(v.shape) for k, v in arrays.items()}


def print_table(r: dict) -> None:
    print(f"\nend to end: {r['recipe']}, {r['questions']} questions")
    print(f"{'stage':<10}{'seconds':>9}")
    for name, s in r["stage_seconds"].items():
        print(f"{name:<10}{s:>9.1f}")
    print(f"{'total':<10}{r['wall_s']:>9.1f}   (stages {r['stages_total_s']:.1f} s + loading/imports "
          f"{r['overhead_s']:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced copy of the recipe")
    parser.add_argument("--keep", default=None, help="leave the output in this folder")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, keep=Path(args.keep) if args.keep else None)))


if __name__ == "__main__":
    main()
