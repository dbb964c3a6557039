"""`hneurons locate`."""

from __future__ import annotations

from types import SimpleNamespace

from ..formats import LOCATE_REPORT
from ..locate.settings import LocateSettings
from ..options import add_arguments
from .common import (
    HELP_FORMATTER,
    add_model_args,
    add_recipe_option,
    in_recipe_output,
    load_from_args,
    model_spec,
    required,
    stage_settings,
)

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
    add_arguments(p, LocateSettings, title="probe")
    p.add_argument("--force", action="store_true", help="accept responses collected with other weights")
    p.add_argument("--no-progress", action="store_true")
    add_recipe_option(p)
    p.set_defaults(func=run)


def resolve(args) -> SimpleNamespace:
    return SimpleNamespace(settings=stage_settings(args, LocateSettings, "locate"), model=model_spec(args),
                           responses=required(args, "responses", "--responses", in_recipe_output(args, "collect")),
                           out=required(args, "out", "--out", in_recipe_output(args, "locate")))


def run(args) -> int:
    from ..locate.stage import format_report, locate
    from ..locking import output_lock

    plan = resolve(args)
    with output_lock(plan.out):  # a second process on this folder is refused before its model loads
        lm = load_from_args(args, plan.model)
        result = locate(lm, plan.responses, plan.out, plan.settings, progress=not args.no_progress, force=args.force)
    print(format_report(result.report))
    print(f"\nwrote {result.neurons_path}, {result.probe_path} and {result.out_dir / LOCATE_REPORT}")
    return 0
