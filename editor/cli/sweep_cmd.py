"""`hneurons sweep`: evaluate the H-Neuron scaling over a grid of alphas and choose one."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import HELP_FORMATTER, MODEL_HELP, add_recipe_option, model_defaults, stage_path
from .eval_cmd import add_eval_args, add_loading_args, load_kwargs_from_args, settings_from_args

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


def _alphas(text: str) -> list[float]:
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"alphas must be comma-separated numbers, got {text!r}") from None


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"control seeds must be comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    from ..loading import DEFAULT_MODEL
    from ..sweep import DEFAULT_ALPHAS

    parser = subparsers.add_parser("sweep", help="evaluate alpha on a grid and choose it under retention constraints",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    what = parser.add_argument_group("what to sweep")
    what.add_argument("--base", default=DEFAULT_MODEL, metavar="MODEL", help=MODEL_HELP)
    what.add_argument("--neurons", metavar="FILE", help="neuron set (neurons.json from locate)")
    what.add_argument("--alphas", type=_alphas, default=list(DEFAULT_ALPHAS),
                      help="comma-separated grid (default " + ",".join(f"{a:g}" for a in DEFAULT_ALPHAS) + "; 1 is "
                           "always added as the reference)")
    what.add_argument("--control-seeds", type=_seed_list, default=[0],
                      help="random-control seeds evaluated at every alpha (default 0; e.g. 0,1,2)")
    choose = parser.add_argument_group("choosing alpha")
    choose.add_argument("--max-knowledge-drop", type=float, default=0.02,
                        help="largest allowed drop of each knowledge metric vs alpha 1 (default 0.02)")
    choose.add_argument("--max-kl", type=float, default=0.1, help="largest allowed mean KL in nats (default 0.1)")
    choose.add_argument("--knowledge", action="append", metavar="TASK:METRIC",
                        help="knowledge metric to protect (repeatable; default hneurons_knowledge_mc:acc and "
                             "hneurons_facts:accuracy)")
    choose.add_argument("--target", action="append", metavar="TASK:METRIC",
                        help="hallucination / over-compliance metric to improve (repeatable; default: the bundled "
                             "tasks' rates)")
    choose.add_argument("--allow-test-split", action="store_true",
                        help="allow tasks that score the test split (biases any report on that split)")
    add_eval_args(parser, default_tasks="hneurons_val")
    add_loading_args(parser)
    parser.add_argument("--out", metavar="DIR", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a sweep of other settings in --out")
    add_recipe_option(parser, recipe_defaults, {"neurons": "--neurons", "out": "--out"})
    parser.set_defaults(func=run)


def recipe_defaults(recipe) -> dict:
    e, ev = recipe.edit, recipe.eval
    return {**model_defaults(recipe, dest="base"), "neurons": stage_path(recipe, "locate", "neurons.json"),
            "alphas": list(e.alpha_grid), "control_seeds": list(range(e.sweep_controls)),
            "max_knowledge_drop": e.constraints.max_knowledge_drop, "max_kl": e.constraints.max_kl,
            "limit": e.sweep_limit, "batch_size": ev.batch_size, "match_layers": ev.match_layers,
            "kl_max_prompts": ev.kl_prompts, "out": stage_path(recipe, "sweep")}


def run(args) -> int:
    from ..evaluate import prepare_environment
    from ..sweep import DEFAULT_KNOWLEDGE, DEFAULT_TARGETS, Constraints, sweep

    settings = settings_from_args(args, controls=len(args.control_seeds))
    prepare_environment(settings)  # offline flags before transformers / datasets are imported
    constraints = Constraints(max_knowledge_drop=args.max_knowledge_drop, max_kl=args.max_kl,
                              knowledge=args.knowledge or DEFAULT_KNOWLEDGE, targets=args.target or DEFAULT_TARGETS)
    report = sweep(args.base, args.neurons, alphas=args.alphas, settings=settings, constraints=constraints,
                   control_seeds=args.control_seeds, match_layers=args.match_layers, out=Path(args.out),
                   allow_test_split=args.allow_test_split, force=args.force,
                   overwrite=args.overwrite, load_kwargs=load_kwargs_from_args(args))
    print(report.summary())
    print(f"\nresults: {Path(args.out) / 'sweep.json'} and {Path(args.out) / 'sweep.png'}")
    return 0
