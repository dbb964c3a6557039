"""`hneurons dose-response`: every metric vs alpha for the H-Neurons and matched random sets; slopes compared."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ..evaluate.settings import DoseSettings
from ..formats import DOSE_REPORT, DOSE_SLOPES_PLOT, NEURONS
from ..options import add_arguments
from .common import (
    HELP_FORMATTER,
    add_eval_progress_option,
    add_model_args,
    add_recipe_option,
    in_recipe_output,
    load_options,
    model_spec,
    required,
    stage_settings,
)

DESCRIPTION = """\
Does the H-Neuron edit do anything? Scale the H-Neurons' activations by each alpha of a grid that spans
suppression and amplification (default 0, 0.5, 1, 1.5, 2, 3) at run time (hooks on one loaded model), and
do the same for --controls random sets matched to the H-Neurons per layer (default 3; 5 for the longer
documented run); score every variant with lm-eval on the tasks' full test splits (alpha 1, the unedited
model, once for all sets). For every metric and margin:

  value per alpha      with a 95% bootstrap CI over items
  slope per unit alpha least squares over the grid, CI by bootstrap over items, for H and each random set
  H - random           slope difference with a CI that includes the between-set variance (t, sets - 1 df),
                       Holm across rows and across the tasks' primary metrics
  rank                 where H's slope falls among the random sets' (1 = largest)

Output (--out): dose_response.json, dose_<task>.png (each metric vs alpha: H-Neurons as a line with its band,
random sets as a grey band), dose_slopes.png, lm_eval/<set>_alpha_<A>/ (a re-run skips finished variants).
Variants: (alphas other than 1) x (1 + controls) + 1; e.g. 5 x 4 + 1 = 21 lm-eval runs by default.

examples:
  hneurons dose-response --model smollm2-135m-instruct --neurons locate/neurons.json --out dose
  hneurons dose-response --model M --neurons n.json --tasks hneurons_false_premise_mc,hneurons_knowledge_mc \\
      --controls 5 --out dose5
  hneurons dose-response --model M --neurons n.json --limit 20 --alphas 0,1,2 --no-kl --out dose-smoke
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("dose-response", help="metric vs alpha for the H-Neurons and matched random "
                                                         "sets: is the H-Neuron slope different from random?",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    what = parser.add_argument_group("what to measure")
    add_model_args(parser)
    what.add_argument("--neurons", metavar="FILE", help="neuron set (neurons.json from locate)")
    what.add_argument("--force", action="store_true",
                      help="apply a neuron set located in other weights of the same architecture")
    add_arguments(parser, DoseSettings, title="grid, random sets, lm-eval, statistics and KL")
    parser.add_argument("--out", metavar="DIR", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a dose-response of other settings in --out")
    add_eval_progress_option(parser)
    add_recipe_option(parser)
    parser.set_defaults(func=run)


def resolve(args) -> SimpleNamespace:
    return SimpleNamespace(
        settings=stage_settings(args, DoseSettings, "dose"), model=model_spec(args),
        neurons=required(args, "neurons", "--neurons", in_recipe_output(args, "locate", NEURONS)),
        out=Path(required(args, "out", "--out", in_recipe_output(args, "dose"))))


def run(args) -> int:
    from ..evaluate.bars import eval_progress
    from ..evaluate.dose import dose_response
    from ..evaluate.lm_eval_run import prepare_environment

    plan = resolve(args)
    prepare_environment(plan.settings)  # offline flags before transformers / datasets are imported
    with eval_progress(not args.no_progress):
        report = dose_response(plan.model, plan.neurons, plan.settings, out=plan.out, force=args.force,
                               overwrite=args.overwrite, load=load_options(args))
    print(report.summary())
    print(f"\nresults: {plan.out / DOSE_REPORT}, {plan.out / DOSE_SLOPES_PLOT} and one dose_<task>.png per task")
    return 0
