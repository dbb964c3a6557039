"""`hneurons run RECIPE`."""

from __future__ import annotations

from .common import HELP_FORMATTER

DESCRIPTION = """\
Run a recipe from start to finish: collect -> locate -> sweep (when edit.alpha is auto) -> edit ->
eval -> card -> push (only when publish.push is true). Each stage writes its artifacts into a
sub-folder of the recipe's output folder. A stage whose artifacts exist and whose settings (and
those of every stage it depends on) are unchanged is resumed, not re-run; a changed setting re-runs
that stage and the ones after it, and the run says which setting changed. Re-running a finished
recipe only prints its summary.

At the end: where the fixed model is, the headline numbers (H-Neurons found, detection AUROC vs
random neurons, hallucination and over-compliance changes, retention), report.md with every stage's
tables and plots, and the command to publish.

examples:
  hneurons run recipes/smollm2-135m-instruct.yaml
  hneurons run recipes/llama-3.1-8b-instruct.yaml --to locate     # stop after locating
  hneurons run recipes/smollm2-135m-instruct.yaml --from eval     # redo eval, card (and push)
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a recipe end to end (resumable)", description=DESCRIPTION,
                              formatter_class=HELP_FORMATTER)
    p.add_argument("recipe_path", metavar="RECIPE", help="recipe YAML file (see recipes/)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   choices=["collect", "locate", "sweep", "edit", "eval", "card", "push"],
                   help="re-run this stage and every later one even if up to date")
    p.add_argument("--to", dest="to_stage", metavar="STAGE",
                   choices=["collect", "locate", "sweep", "edit", "eval", "card", "push"],
                   help="stop after this stage")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline.run import run_recipe

    run_recipe(args.recipe_path, from_stage=args.from_stage, to_stage=args.to_stage, progress=not args.no_progress)
    return 0
