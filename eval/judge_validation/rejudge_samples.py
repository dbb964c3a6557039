"""Re-judge stored lm-eval sample logs with the current judges and list every per-item score that changes.

    python eval/judge_validation/rejudge_samples.py RUN/lm_eval/*/samples_*.jsonl

After a judge is fixed, this says which finished generation runs it touches without generating again: each
sample of a bundled generation task (``output_type: generate_until`` in eval/hneurons/, with the
``process_results`` its YAML names, following ``include:``) is scored again by that function of
eval/hneurons/utils.py on the response lm-eval logged, and compared with the score logged then. Other tasks'
logs are skipped (the MC tasks have no judge). The files are only read: a run
whose scores change is re-run with ``hneurons`` (the results cache keys on the judges' source, so nothing
scored by the old judge is reused).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from functools import cache
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parents[1] / "hneurons"
sys.path.insert(0, str(TASK_DIR))
import utils  # noqa: E402  (eval/hneurons/utils.py: the tasks' own scoring)

_FIELD_RE = re.compile(r"^(include|task|output_type|process_results):\s*(?:!function\s+utils\.)?(\S+)", re.M)


def _fields(name: str) -> dict[str, str]:
    """A task YAML's top-level fields that matter here, those of the files it includes filled in."""
    own = dict(_FIELD_RE.findall((TASK_DIR / name).read_text(encoding="utf-8")))
    return {**(_fields(own["include"]) if "include" in own else {}), **own}


@cache
def scorers() -> dict:
    """task name -> its process_results function, for every generation task of eval/hneurons/."""
    found = {}
    for path in sorted(TASK_DIR.glob("*.yaml")):
        fields = _fields(path.name)
        if fields.get("output_type") == "generate_until" and "process_results" in fields:
            found[fields["task"]] = getattr(utils, fields["process_results"])
    return found


def scorer_of(path: Path):
    return scorers().get(path.name.removeprefix("samples_").split(".jsonl")[0])


def _same(old, new) -> bool:
    both_nan = isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    return both_nan or old == new


def changes(path: Path) -> tuple[int, list[dict]]:
    """(samples scored, the ones whose logged score differs from today's judges')."""
    score = scorer_of(path)
    scored, changed = 0, []
    for line in path.read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        now = score(sample["doc"], sample["filtered_resps"])
        scored += 1
        diff = {k: [sample[k], v] for k, v in now.items() if k in sample and not _same(sample[k], v)}
        if diff:
            changed.append({"id": sample["doc"].get("id"), "response": sample["filtered_resps"], "was_now": diff})
    return scored, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", nargs="+", type=Path, help="lm-eval samples_<task>.jsonl files")
    parser.add_argument("--show", type=int, default=5, help="changed samples to print per file (default 5)")
    args = parser.parse_args(argv)
    totals = Counter()
    for path in args.samples:
        if scorer_of(path) is None:
            continue
        scored, changed = changes(path)
        totals["files"] += 1
        totals["samples"] += scored
        totals["changed"] += len(changed)
        if changed:
            print(f"{path}: {len(changed)} of {scored} changed")
            for item in changed[:args.show]:
                print(f"    {item['id']}: {item['was_now']} {str(item['response'])[:120]}")
    print(f"{totals['files']} files, {totals['samples']} samples, {totals['changed']} changed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
