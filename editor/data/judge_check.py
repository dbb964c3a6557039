"""How well the judges agree with people: the hand-labelled responses in ``eval/judge_validation/``.

``responses.jsonl`` holds real model responses to the bundled tasks (one JSON object per line: ``id``,
``judge`` - ``answer``, ``fabricated``, ``premise``, ``context`` or ``flip`` -, ``model``, ``task``, ``prompt``,
``answers``, ``false_answers``, ``entity``, ``relation``, ``response``); ``labels.jsonl`` the label a person
gave each one by reading it against ``GUIDE.md`` (``id``, ``label``, ``note``). :func:`check_judges` runs the
rule-based judges (or, with ``model_judge``, a model judge: :mod:`editor.data.model_judge`) on every
response and reports per judge: n, agreement, Cohen's kappa, the confusion table (person x judge) and the
disagreements. ``hneurons judge-check`` prints it; eval/README.md holds the table for the committed set.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..paths import EVAL_DIR
from ..stats import cohen_kappa
from .behaviour import (
    CONTEXT_LABELS,
    FLIP_LABELS,
    PREMISE_LABELS,
    judge_context,
    judge_flip,
    judge_premise,
)
from .judge import LABELS, judge
from .questions import answer_vocabulary

VALIDATION_DIR = EVAL_DIR / "judge_validation"
JUDGE_LABELS = {"answer": LABELS, "fabricated": LABELS, "premise": PREMISE_LABELS, "context": CONTEXT_LABELS,
                "flip": FLIP_LABELS}
TARGET_AGREEMENT = 0.95  # eval/README.md: below it the README lists the failure kinds


def rule_label(record: Mapping[str, Any]) -> str:
    """The rule-based judge's label of one validation record."""
    kind, response = record["judge"], record["response"]
    if kind == "answer":
        return judge(response, record["answers"]).label
    if kind == "fabricated":
        return judge(response, [], fabricated=True).label
    if kind == "premise":
        return judge_premise(response, record["false_answers"], record["answers"], entity=record["entity"],
                             other_answers=answer_vocabulary(record["relation"])).label
    if kind == "context":
        return judge_context(response, record["false_answers"], record["answers"]).label
    if kind == "flip":
        return judge_flip(response, record["answers"], answer_vocabulary(record["relation"])).label
    raise InputError(f"validation record {record.get('id')!r}: unknown judge {kind!r}; expected one of "
                     f"{', '.join(JUDGE_LABELS)}")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path} not found (the hand-labelled judge validation set: eval/judge_validation/)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {number} is not valid JSON: {exc.msg}") from None
    return rows


def labelled(folder: Path = VALIDATION_DIR) -> list[dict]:
    """Every response with its human label (``human``); a response without a label, or a label outside its
    judge's list, is an error naming it."""
    labels = {row["id"]: row for row in read_jsonl(folder / "labels.jsonl")}
    records = []
    for record in read_jsonl(folder / "responses.jsonl"):
        if record["id"] not in labels:
            raise InputError(f"{folder / 'labels.jsonl'} has no label for response {record['id']!r}")
        human = labels[record["id"]]["label"]
        if human not in JUDGE_LABELS.get(record["judge"], ()):
            raise InputError(f"label {human!r} of {record['id']!r} is not one of the {record['judge']} judge's "
                             f"labels ({', '.join(JUDGE_LABELS.get(record['judge'], ()))})")
        records.append({**record, "human": human, "note": labels[record["id"]].get("note", "")})
    return records


def check_judges(folder: Path = VALIDATION_DIR, labeller: Callable[[Mapping[str, Any]], str] = rule_label
                 ) -> dict[str, Any]:
    """Agreement of ``labeller`` with the human labels, per judge (module docstring)."""
    records = labelled(folder)
    per_judge: dict[str, dict[str, Any]] = {}
    for kind in JUDGE_LABELS:
        rows = [r for r in records if r["judge"] == kind]
        if not rows:
            continue
        predicted = [labeller(r) for r in rows]
        humans = [r["human"] for r in rows]
        agree = sum(p == h for p, h in zip(predicted, humans))
        per_judge[kind] = {
            "n": len(rows), "agreement": agree / len(rows), "kappa": cohen_kappa(humans, predicted),
            "models": dict(sorted(Counter(r["model"] for r in rows).items())),
            "confusion": {h: dict(sorted(Counter(p for p, hh in zip(predicted, humans) if hh == h).items()))
                          for h in JUDGE_LABELS[kind] if h in humans},
            "disagreements": [{"id": r["id"], "response": r["response"], "human": r["human"], "judge": p,
                               "note": r["note"]} for r, p in zip(rows, predicted) if p != r["human"]],
        }
    return {"n": len(records), "judges": per_judge, "target_agreement": TARGET_AGREEMENT}


def render_report(report: Mapping[str, Any], disagreements: bool = False) -> str:
    lines = [f"{'judge':<11} {'n':>4} {'agreement':>10} {'kappa':>7}   confusion (person -> judge)"]
    for kind, row in report["judges"].items():
        confusion = "; ".join(f"{h}: " + ", ".join(f"{p} {n}" for p, n in got.items())
                              for h, got in row["confusion"].items())
        mark = "" if row["agreement"] >= report["target_agreement"] else "  < target"
        lines.append(f"{kind:<11} {row['n']:>4} {row['agreement']:>10.3f} {row['kappa']:>7.3f}   {confusion}{mark}")
        if disagreements:
            lines += [f"    {d['id']}: person {d['human']}, judge {d['judge']}: {d['response'][:140]!r}"
                      for d in row["disagreements"]]
    return "\n".join(lines)
