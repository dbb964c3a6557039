"""`hneurons origin`."""

from __future__ import annotations

from ..locate.settings import OriginSettings
from ..options import add_arguments, from_args
from .common import (
    HELP_FORMATTER,
    add_model_args,
    load_from_args,
    load_options,
    model_spec,
)

DESCRIPTION = """\
Were the H-Neurons there before instruction tuning? Two analyses of an instruct model's H-Neurons
against its base model (same architecture), as in Gao et al. (docs/METHOD.md section 7):

backward transfer (needs --base-responses, a collect folder of the BASE model, collected with
  `--prompt-style base`): the instruct model's probe, unchanged, scores the base model's own answers.
  Reported as AUROC with a bootstrap 95% CI (thresholds do not transfer, so no accuracy), against
  classifiers on the same number of random neurons and on the H-Neurons alone, both fit on the instruct
  model's training features exactly as `hneurons locate` fits its random baseline.

parameter drift (needs --instruct, the probe's own model): per neuron, 1 - cos of its W_up row and of its
  W_down column between base and instruct, each z-scored over all neurons and averaged; all neurons are
  ranked. Normalised rank: 0 = the most changed neuron, 1 = the least changed (the paper's convention;
  it reports 0.58-0.97 for H-Neurons: they change less than average). One-sided test of the H-Neurons'
  mean normalised rank against 0.5. The checkpoints are read tensor block by tensor block from their
  safetensors files, never loaded as models, so this works for models larger than memory.

Writes OUT/origin.json (both analyses, model identities, versions), OUT/drift.safetensors (per-neuron
drift), OUT/features/ (base-model CETT features) and the plots OUT/origin_drift_hist.png and
OUT/origin_drift_per_layer.png. Re-running resumes the features and the drift.

examples:
  hneurons collect --model meta-llama/Llama-3.1-8B --prompt-style base --data triviaqa --out runs/base/collect
  hneurons origin --probe runs/instruct/locate/probe.safetensors --base meta-llama/Llama-3.1-8B \\
      --instruct meta-llama/Llama-3.1-8B-Instruct --base-responses runs/base/collect --out runs/origin
  hneurons origin --probe runs/instruct/locate/probe.safetensors --base meta-llama/Llama-3.1-8B \\
      --instruct meta-llama/Llama-3.1-8B-Instruct --out runs/origin-drift        # drift only
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("origin", help="backward transfer and parameter drift of the H-Neurons (base vs instruct)",
                              description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    p.add_argument("--probe", required=True, help="probe.safetensors from `hneurons locate` on the instruct model")
    p.add_argument("--locate", metavar="DIR",
                   help="that locate folder (locate.json, features/); default: the probe's folder")
    add_model_args(p, flag="--base", required=True)
    p.add_argument("--instruct", metavar="MODEL",
                   help="the probe's own (instruct) model, for parameter drift; any MODEL form")
    p.add_argument("--instruct-revision", help="Hub revision of --instruct")
    p.add_argument("--base-responses", metavar="DIR",
                   help="collect folder of the base model (`hneurons collect --prompt-style base`), for backward "
                        "transfer")
    p.add_argument("--instruct-responses", metavar="DIR",
                   help="collect folder locate read (default: the one named in locate.json)")
    p.add_argument("--out", required=True, help="output folder")
    add_arguments(p, OriginSettings, title="controls")
    p.add_argument("--force", action="store_true",
                   help="accept an --instruct checkpoint whose weights differ from the probe's model, or base "
                        "responses collected with other weights")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..locate.origin import format_report, origin

    if not args.instruct and not args.base_responses:
        raise InputError("give --instruct (parameter drift), --base-responses (backward transfer), or both")
    settings = from_args(OriginSettings, args)
    # Backward transfer runs the base model; drift alone only reads its files.
    base = load_from_args(args) if args.base_responses else model_spec(args)
    result = origin(args.probe, args.out, base=base, instruct=args.instruct, base_responses=args.base_responses,
                    locate_dir=args.locate, instruct_responses=args.instruct_responses, settings=settings,
                    force=args.force, progress=not args.no_progress,
                    load=load_options(args), instruct_revision=args.instruct_revision)
    print(format_report(result.report))
    print(f"\nwrote {result.path}" + "".join(f", {result.out_dir / p}" for p in result.report["plots"]))
    return 0
