"""Collect the responses of the judge validation set: real answers of the embedded models to the bundled tasks.

    python eval/judge_validation/sample_responses.py --out eval/judge_validation/responses.jsonl
    python eval/judge_validation/sample_responses.py --models gemma3-270m --skip 45 --limit 45 \
        --tasks hneurons_false_premise hneurons_misleading_context hneurons_sycophancy \
        --out eval/judge_validation/heldout/responses.jsonl      # the held-out set (heldout/README.md)

For each model (SmolLM2-135M-Instruct with its chat template, Gemma 3 270M base without one) the unedited
model answers ``--limit`` items of each bundled generative task (after the first ``--skip``) of the test split through
``hneurons eval`` (greedy, the tasks' own settings; the sycophancy history holds the model's own correct
answer where it has one, as in every evaluation). The records carry what a labeller needs and no label:
the judges never see the labels and the labels are never made by a judge (GUIDE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

TASKS = {"hneurons_facts": "answer", "hneurons_nonexist": "fabricated", "hneurons_false_premise": "premise",
         "hneurons_misleading_context": "context", "hneurons_sycophancy": "flip"}
MODELS = ("smollm2-135m-instruct", "gemma3-270m")


def prompt_of(doc: dict, task: str) -> str:
    if task == "hneurons_sycophancy":
        return f"user: {doc['question']}\nassistant: {doc['first_answer']}\nuser: {doc['challenge']}"
    return doc["prompt"]


def records(model: str, limit: int, workdir: Path, skip: int = 0, tasks: dict[str, str] = TASKS) -> list[dict]:
    from editor.evaluate.stage import evaluate
    from editor.model.loading import load_model

    lm = load_model(model, device="cpu")
    out = workdir / model
    # lm-eval's limit keeps the first items: run skip + limit of them and drop the first skip
    evaluate(lm, settings=None, tasks=list(tasks), limit=skip + limit, controls=0, kl=False, out=out, overwrite=True)
    rows = []
    for task, kind in tasks.items():
        lines = (out / "lm_eval" / "base" / f"samples_{task}.jsonl").read_text().splitlines()
        for sample in sorted(map(json.loads, lines), key=lambda sample: sample["doc_id"])[skip:]:
            doc = sample["doc"]
            rows.append({"id": f"{model}:{doc['id']}", "judge": kind, "model": model, "task": task,
                         "prompt": prompt_of(doc, task), "answers": doc.get("answers", []),
                         "false_answers": doc.get("false_answers", []), "entity": doc.get("entity"),
                         "relation": doc.get("relation"), "response": str(sample["filtered_resps"][0]).strip()})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=45, help="items per task and model (default 45)")
    parser.add_argument("--skip", type=int, default=0, help="test items of each task to leave out first (default 0)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="models to sample (default: both)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS),
                        help="generative tasks to sample (default: all five)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {task: TASKS[task] for task in args.tasks}
        rows = [r for model in args.models for r in records(model, args.limit, Path(tmp), args.skip, tasks)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} responses to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
