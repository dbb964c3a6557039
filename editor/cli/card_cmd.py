"""`hneurons card EDIT_DIR`: write the model card (README.md) of an edit folder."""

from __future__ import annotations

import json

from ..formats import PUBLISH_MANIFEST
from .common import HELP_FORMATTER

DESCRIPTION = """\
Write the model card of an `hneurons edit` output folder: README.md with Hugging Face metadata
(base_model and base_model_relation, library_name transformers or peft, license, tags, datasets and a
model-index with every evaluated metric of the edited model) and a body filled from the artifacts:
what H-Neurons are, the edit (mode, alpha and how it was chosen, neurons per layer with a plot), the
detection report (probe AUROC with CI vs random neurons), the base-vs-edited table with CIs and the
random-neuron control, the dose-response when given (the primary metrics' slopes per unit alpha for the
H-Neurons and matched random sets, H - random with Holm-adjusted p-values, what is and is not significant,
the slope figures), the limitations computed from the numbers (what got worse, what a random control
explains as well), the origin analysis when given, how to load it, and how to reproduce it (stage
commands or the recipe, package versions, sha256 of every file).

The plots and reports the card cites are copied into the folder (plots/, eval_results.json,
locate.json, sweep.json, dose_response.json, origin.json, recipe.yaml) and listed with README.md in
hneurons_publish.json, so `hneurons push` uploads them with the model. Re-running the command
re-renders the card; reports copied by an earlier run are found again without their flags.

Reports are checked against the edit: another architecture, a base model other than the edit's
source (eval, dose-response), another neuron set (locate, sweep, dose-response) or another alpha is an
error. Without --locate the report next to the edit's neuron file (locate.json) is used when it exists.

examples:
  hneurons card runs/smollm2/edit-weights --eval runs/smollm2/eval/eval_results.json
  hneurons card runs/smollm2/edit-ia3 --locate runs/smollm2/locate --eval runs/smollm2/eval-ia3 \\
      --sweep runs/smollm2/sweep/sweep.json --dose runs/smollm2/dose --repo my-user/SmolLM2-135M-Instruct-hfix-ia3
  hneurons card out/fixed --recipe recipe.yaml --repo my-user/fixed --print
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("card", help="write the model card (README.md) of an edit folder for the Hub",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    parser.add_argument("folder", metavar="EDIT_DIR",
                        help="output folder of `hneurons edit` (holds hneurons_edit.json)")
    parser.add_argument("--locate", metavar="FILE", help="locate report (locate.json or its folder); default: the one "
                                                          "next to the edit's neuron file, if any")
    parser.add_argument("--eval", metavar="FILE", help="eval results (eval_results.json or its folder) of this edit")
    parser.add_argument("--sweep", metavar="FILE", help="alpha sweep report (sweep.json or its folder)")
    parser.add_argument("--dose", metavar="FILE", help="dose-response report (dose_response.json or its folder) of "
                                                        "the edit's neurons")
    parser.add_argument("--origin", metavar="FILE", help="origin analysis (origin.json or its folder)")
    parser.add_argument("--recipe", dest="quoted_recipe", metavar="FILE", help="the recipe YAML the run was made from")
    parser.add_argument("--repo", metavar="OWNER/NAME", help="the Hub repo the card is for (names the model and the "
                                                              "load snippets)")
    parser.add_argument("--print", action="store_true", help="also print the card")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..artifacts import read_json
    from ..report.card import write_card

    if args.quoted_recipe:
        from ..pipeline.recipe import load_recipe

        load_recipe(args.quoted_recipe)  # a recipe quoted in a card must be a valid one
    readme = write_card(args.folder, locate_report=args.locate, eval_results=args.eval, sweep=args.sweep,
                        dose=args.dose, origin=args.origin, recipe=args.quoted_recipe, repo_id=args.repo)
    files = sorted(read_json(readme.parent / PUBLISH_MANIFEST, "publish manifest")["files"])
    if args.json:
        print(json.dumps({"readme": str(readme), "publish_manifest": str(readme.parent / PUBLISH_MANIFEST),
                          "files": files}, indent=2))
    else:
        if args.print:
            print(readme.read_text(encoding="utf-8"))
        print(f"wrote {readme} and {len(files) - 1} files it cites; listed in {readme.parent / PUBLISH_MANIFEST}")
    return 0
