"""`hneurons abstain-report`: abstention of several edits of one base model, side by side."""

from __future__ import annotations

from .common import HELP_FORMATTER

DESCRIPTION = """\
Compare how well several edits abstain ("I don't know.") where their base model would answer wrong, from the
folders `hneurons eval` wrote (each with the base model and one edited variant, hneurons_facts among the tasks).
Every folder must evaluate the same base model (weights fingerprint) on the same items, else an error.

One table (abstention.json, abstention.md) and one risk-coverage plot (abstention_rc.png): per variant accuracy,
hallucination and abstention rates (Wilson 95% CIs), their paired changes from the base model (exact McNemar
mid-p CIs), selectivity (of the variant's abstentions, the share the base model got wrong; Wilson CI) and the
abstention AUROC against base wrongness (percentile bootstrap CI). The AUROC of a 0/1 abstention depends on how
often it abstains (0.5 + (rate on base-wrong - rate on base-right) / 2): read it with the rate beside it.

Variants named random... (e.g. random-seed0=ev-random0) are random controls: every other variant gets its
difference from their mean (AUROC, accuracy, hallucination, abstention) with a 95% CI that adds the between-set
variance to the item variance (t, sets - 1 df). When an eval folder holds abstention_probe.json (`hneurons eval
--detector`), the probe's curve and AUROC (the ceiling) are added.

examples:
  hneurons abstain-report ev-h=H ev-prompt=prompt ev-r0=random0 ev-r1=random1 ev-r2=random2 --out abst
  hneurons abstain-report runs/a/eval runs/b/eval --out abst --bootstrap 5000
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("abstain-report", help="abstention of several edits of one base model, side by side",
                              description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    p.add_argument("evals", nargs="+", metavar="EVAL_DIR[=NAME]",
                   help="an `hneurons eval` output folder, optionally named (default: the folder's name); names "
                        "starting with 'random' mark random controls")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=run)


def parse_evals(specs: list[str]) -> tuple[list[str], list[str]]:
    from pathlib import Path

    folders, names = [], []
    for spec in specs:
        folder, _, name = spec.partition("=")
        folders.append(folder)
        names.append(name or Path(folder).resolve().name)
    return folders, names


def run(args) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..evaluate.abstention import compare_abstention
    from ..locking import output_lock

    if args.bootstrap < 100:
        raise InputError(f"--bootstrap must be at least 100; got {args.bootstrap}")
    folders, names = parse_evals(args.evals)
    with output_lock(args.out):
        doc = compare_abstention(folders, names, args.out, n_boot=args.bootstrap, seed=args.seed)
    print((Path(args.out) / "abstention.md").read_text(encoding="utf-8"))
    print(f"results: {Path(args.out) / 'abstention.json'}, plot: {Path(args.out) / doc['files']['plot']}")
    return 0
