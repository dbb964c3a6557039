"""What the trained abstention edit costs: the timings of a finished abstain recipe run, read from its artifacts.

    hneurons run recipes/smollm2-135m-instruct-abstain.yaml          # the run itself (its wall time is the figure)
    python benchmarks/abstain_timing.py runs/smollm2-135m-instruct-abstain [--out benchmarks/results-abstain.json]

Reads run_state.json (seconds per stage), every trained edit's hneurons_edit.json (epochs run, seconds per epoch,
trainable parameters) and writes one JSON with the machine it is read on (run it on the machine that ran the
recipe). No target: the issue asks for the time to train and evaluate on a 2-core CPU, reported as measured; the
evaluation time of the abstention stage is its stage time minus its trainings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def training(folder: Path) -> dict:
    manifest = json.loads((folder / "hneurons_edit.json").read_text())
    abstain = manifest["abstain"]
    history = abstain["training"]["history"]
    return {"folder": str(folder), "epochs_run": len(history), "best_epoch": abstain["training"]["best_epoch"],
            "seconds": round(sum(h.get("seconds") or 0.0 for h in history), 1),
            "seconds_per_epoch": [h.get("seconds") for h in history],
            "trainable_parameters": abstain.get("trainable_parameters"), "strength": abstain["strength"]["chosen"],
            "baseline": manifest.get("baseline"), "control": manifest.get("control")}


def timings(run: Path) -> dict:
    state = json.loads((run / "run_state.json").read_text())
    stages = {name: s.get("seconds") for name, s in state["stages"].items()}
    trainings = {"h-neurons": training(run / "abstain")}
    for folder in sorted((run / "abstention" / "edits").glob("*")):
        if (folder / "hneurons_edit.json").is_file():
            trainings[folder.name] = training(folder)
    baseline_seconds = sum(t["seconds"] for n, t in trainings.items() if n != "h-neurons")
    abstention = stages.get("abstention")
    return {"run": str(run), "stages_seconds": stages, "total_seconds": round(sum(v or 0 for v in stages.values()), 1),
            "trainings": trainings,
            "abstention_stage": {"seconds": abstention, "training_seconds": round(baseline_seconds, 1),
                                 "evaluation_seconds": round(abstention - baseline_seconds, 1) if abstention else None,
                                 "evaluated": sorted(p.name for p in (run / "abstention" / "eval").glob("*"))},
            "machine": machine()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run folder of an abstain recipe")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-abstain.json"))
    args = parser.parse_args()
    doc = timings(args.run)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for name, t in doc["trainings"].items():
        print(f"train {name:<14} {t['seconds']:>7.1f} s  {t['epochs_run']} epochs  {t['trainable_parameters']} params")
    print(f"abstention stage: {doc['abstention_stage']}")
    print(f"total {doc['total_seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
