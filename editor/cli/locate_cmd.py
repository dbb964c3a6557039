"""`hneurons locate`."""

from __future__ import annotations

from .common import (HELP_FORMATTER, add_batch_size_arg, add_model_args, add_recipe_option, batch_size_from,
                     load_from_args, model_defaults, stage_path)

DESCRIPTION = """\
Find the H-Neurons: compute each FFN neuron's CETT contribution (|z_j| * ||W_down[:, j]|| / ||W_down z||,
on the input of down_proj) averaged over the answer tokens and over all other tokens of every collected
response, fit an L1-regularised logistic-regression probe over a whole path of C values on the train
split, choose C on the validation split, and take the neurons with positive weight.

The report scores the probe on the held-out test split (AUROC and accuracy with bootstrap 95% CIs)
against classifiers on the same number of random neurons, per question family, balanced within
families, across families (train on some relations, test on others) and on fabricated entities.

Writes OUT/neurons.json (the H-Neuron set, input of `hneurons edit`), OUT/probe.safetensors (a reusable
hallucination detector), OUT/locate.json (the report), OUT/features/ (fp16 CETT features; resumable)
and PNG plots (H-Neurons per layer, regularisation path, ROC curves).

examples:
  hneurons locate --model smollm2-135m-instruct --responses runs/smollm2/collect --out runs/smollm2/locate
  hneurons locate --responses runs/x/collect --out runs/x/locate --C 0.05 0.1 0.2 --labels 1v1
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("locate", help="CETT features + sparse probe -> H-Neurons and a detection report",
                              description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    add_model_args(p)
    p.add_argument("--responses", help="collect output folder (holding responses.jsonl)")
    p.add_argument("--out", help="output folder")
    g = p.add_argument_group("probe")
    g.add_argument("--labels", choices=["3v1", "1v1"], default="3v1",
                   help="3v1 (paper): hallucinated answer tokens vs faithful answer tokens and all other tokens; "
                        "1v1: hallucinated vs faithful answer tokens only")
    g.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="CETT over a token span (paper: mean)")
    g.add_argument("--span", choices=["response", "answer"], default="response",
                   help="answer tokens: the whole response (default; the same for both classes and at detection "
                        "time) or narrowed to the gold alias where found (correct answers only)")
    g.add_argument("--C", type=float, nargs="+", default=None, metavar="C",
                   help="C values of the path (one value fixes C); default: an automatic log grid")
    g.add_argument("--C-path", type=int, default=24, metavar="N", help="size of the automatic C grid (default 24)")
    g.add_argument("--rule", choices=["sparsest_within", "best"], default="sparsest_within",
                   help="how C is chosen on validation AUROC: the sparsest C within --tol of the best (default), "
                        "or the best")
    g.add_argument("--tol", type=float, default=0.01, help="AUROC tolerance of the sparsest_within rule")
    g.add_argument("--random-draws", type=int, default=10, help="random-neuron baselines (default 10)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of every CI (default 1000)")
    g.add_argument("--seed", type=int, default=0)
    add_batch_size_arg(p, 8, "responses per forward pass", "8 on the CPU")
    p.add_argument("--force", action="store_true", help="accept responses collected with other weights")
    p.add_argument("--no-progress", action="store_true")
    add_recipe_option(p, recipe_defaults, {"responses": "--responses", "out": "--out"})
    p.set_defaults(func=run)


def recipe_defaults(recipe) -> dict:
    s = recipe.locate
    return {**model_defaults(recipe), "labels": s.labels, "aggregate": s.aggregate, "span": s.span, "C": s.C,
            "C_path": s.n_C, "rule": s.rule, "tol": s.tol, "random_draws": s.random_draws, "bootstrap": s.bootstrap, "seed": s.seed,
            "batch_size": s.batch_size, "responses": stage_path(recipe, "collect"), "out": stage_path(recipe, "locate")}


def run(args) -> int:
    from ..locate import LocateSettings, format_report, locate

    batch_size = batch_size_from(args)
    lm = load_from_args(args)
    settings = LocateSettings(labels=args.labels, aggregate=args.aggregate, span=args.span, C=args.C, n_C=args.C_path,
                              rule=args.rule, tol=args.tol, random_draws=args.random_draws, bootstrap=args.bootstrap,
                              seed=args.seed, batch_size=batch_size)
    result = locate(lm, args.responses, args.out, settings, progress=not args.no_progress, force=args.force)
    print(format_report(result.report))
    print(f"\nwrote {result.neurons_path}, {result.probe_path} and {result.out_dir / 'locate.json'}")
    return 0
