"""`hneurons judge-check`: how well the judges agree with hand-written labels."""

from __future__ import annotations

import json
from pathlib import Path

from .common import HELP_FORMATTER, add_model_args, load_from_args

DESCRIPTION = """\
Run the judges on the hand-labelled validation set (eval/judge_validation/: real responses of
SmolLM2-135M-Instruct and Gemma 3 270M to the bundled tasks, each labelled by reading it against
GUIDE.md, not by any judge) and report, per judge (answer, fabricated, premise, context, flip): n, agreement with the
labeller, Cohen's kappa and the confusion table (person -> judge). The rule-based judges are the default and
what every hneurons number uses; --judge MODEL validates an instruction model as a judge instead (any local
or Hub model; on a GPU). A judge below 95% agreement is marked; eval/README.md lists its failure kinds.

examples:
  hneurons judge-check
  hneurons judge-check --disagreements
  hneurons judge-check --judge Qwen/Qwen2.5-7B-Instruct --device cuda --json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("judge-check", help="agreement of the judges with hand-labelled responses",
                              description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    p.add_argument("--folder", metavar="DIR", help="validation set folder (responses.jsonl, labels.jsonl; default: "
                                                    "the bundled eval/judge_validation)")
    add_model_args(p, flag="--judge", help_text="validate this instruction model as a judge instead of the "
                                                "rule-based judges (a Hub id, local folder, .gguf file or alias)")
    p.add_argument("--disagreements", action="store_true", help="list every response a judge labels differently")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.judge_check import (
        VALIDATION_DIR,
        check_judges,
        render_report,
        rule_label,
    )

    folder = Path(args.folder) if args.folder else VALIDATION_DIR
    labeller = rule_label
    if args.model:
        from ..data.model_judge import ModelJudge

        labeller = ModelJudge(load_from_args(args, args.model))
    report = check_judges(folder, labeller)
    report["judge"] = args.model or "rules"
    print(json.dumps(report, indent=2) if args.json else render_report(report, args.disagreements))
    return 0
