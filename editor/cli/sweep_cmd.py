"""`hneurons sweep`: evaluate the H-Neuron scaling over a grid of alphas and choose one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

from ..errors import InputError
from ..evaluate.settings import SweepSettings
from ..formats import NEURONS, SWEEP_PLOT, SWEEP_REPORT
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
Scale the H-Neurons' activations by each alpha of a grid (default 0, 0.25, 0.5, 1, 1.5, 2, 3) at run time
(hooks on one loaded model; no checkpoint is written), evaluate every point with lm-eval next to a random-neuron
control of the same size, draw each metric against alpha, and choose the alpha that most reduces
hallucination / over-compliance while keeping the model's knowledge and behaviour:

  score(alpha)   mean improvement, against alpha = 1, of the target metrics (oriented by lm-eval's
                 higher_is_better): hallucination rates, premise rejection, misleading-context adoption,
                 sycophancy flips (--target TASK:METRIC to choose)
  constraints    knowledge metrics (--knowledge; default hneurons_knowledge_mc:acc and
                 hneurons_facts:accuracy) drop by at most --max-knowledge-drop (default 0.02 = 2 points), and
                 the mean KL(base || edited) on neutral prompts is at most --max-kl (default 0.1 nats)

The chosen alpha is the feasible alpha != 1 with the best positive score; when none meets the constraints (or
none helps) the sweep says so plainly and lists the closest candidates.

alpha is a hyperparameter, so it must not be chosen on the data the final report scores: the sweep runs on the
validation-split tasks by default (--tasks hneurons_val) and refuses tasks that score the test split unless
--allow-test-split is given. sweep.json records every task's split.

Output (--out): sweep.json (grid, per-alpha metrics with CIs, control, KL, constraints, chosen alpha),
sweep.png, lm_eval/alpha_<A>[_control_seed<S>]/ (lm-eval's output per point; a re-run skips finished points).

examples:
  hneurons sweep --base smollm2-135m-instruct --neurons locate/neurons.json --out sweep
  hneurons sweep --base smollm2-135m-instruct --neurons n.json --alphas 0,0.5,1,2 --limit 100 --out sweep
  hneurons sweep --base M --neurons n.json --tasks truthfulqa_mc2,arc_easy --target truthfulqa_mc2:acc \\
      --knowledge arc_easy:acc --allow-test-split --out sweep
"""


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"control seeds must be comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser("sweep", help="evaluate alpha on a grid and choose it under retention constraints",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    what = parser.add_argument_group("what to sweep")
    add_model_args(parser, flag="--base", metavar="MODEL")
    what.add_argument("--neurons", metavar="FILE", help="neuron set (neurons.json from locate)")
    what.add_argument("--force", action="store_true",
                      help="apply a neuron set located in other weights of the same architecture")
    # hneurons 0.1 spelling: a list of seeds (now --controls N --control-seed S, a run of N seeds from S)
    what.add_argument("--control-seeds", type=_seed_list, default=None, help=argparse.SUPPRESS)
    add_arguments(parser, SweepSettings, title="grid, choice of alpha, lm-eval, controls and KL")
    parser.add_argument("--out", metavar="DIR", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a sweep of other settings in --out")
    add_eval_progress_option(parser)
    add_recipe_option(parser)
    parser.set_defaults(func=run)


def _old_control_seeds(args) -> dict:
    """--control-seeds 0,1,2 (deprecated) as --controls 3 --control-seed 0."""
    seeds = args.control_seeds
    if seeds is None:
        return {}
    print("hneurons: --control-seeds is deprecated; use --controls N --control-seed FIRST", file=sys.stderr)
    if seeds and seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise InputError(f"--control-seeds {','.join(map(str, seeds))}: only a run of consecutive seeds can be "
                         f"expressed; use --controls N --control-seed FIRST")
    return {"controls": len(seeds), "control_seed": seeds[0] if seeds else 0}


def resolve(args) -> SimpleNamespace:
    return SimpleNamespace(
        settings=SweepSettings.of(stage_settings(args, SweepSettings, "sweep"), **_old_control_seeds(args)),
        model=model_spec(args), neurons=required(args, "neurons", "--neurons", in_recipe_output(args, "locate", NEURONS)),
        out=Path(required(args, "out", "--out", in_recipe_output(args, "sweep"))))


def run(args) -> int:
    from ..evaluate.bars import eval_progress
    from ..evaluate.lm_eval_run import prepare_environment
    from ..evaluate.sweep import sweep

    plan = resolve(args)
    prepare_environment(plan.settings)  # offline flags before transformers / datasets are imported
    out = plan.out
    with eval_progress(not args.no_progress):
        report = sweep(plan.model, plan.neurons, plan.settings, out=out, force=args.force, overwrite=args.overwrite,
                       load=load_options(args))
    print(report.summary())
    print(f"\nresults: {out / SWEEP_REPORT} and {out / SWEEP_PLOT}")
    return 0
