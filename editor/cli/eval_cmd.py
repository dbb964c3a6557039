"""`hneurons eval`: lm-eval benchmarks, base vs edited, with random-neuron controls and KL."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ..evaluate.settings import EvalSettings
from ..formats import EVAL_RESULTS, NEURONS
from ..model.loading import DEFAULT_MODEL
from ..options import add_arguments
from .common import (
    HELP_FORMATTER,
    add_eval_progress_option,
    add_model_args,
    add_recipe_option,
    in_recipe_output,
    load_options,
    required,
    stage_settings,
)

DESCRIPTION = """\
Evaluate a model with lm-evaluation-harness, or compare an edited model with its base model: one table of
metric, base, edited, delta, 95% CI of the delta (paired bootstrap over the same items) and whether it is
significant, next to what an edit of the same number of random neurons does (the control). Also measures
the KL divergence of the edited model's next-token distributions from the base model's on neutral prompts.

What is compared:
  --model EDITED --base BASE            a written checkpoint (e.g. from `hneurons edit`) vs its base
  --base BASE --adapter DIR             base + PEFT adapter (IA3 / LoRA from `hneurons edit`) vs base
  --base BASE --neurons FILE --alpha A  the neuron set scaled by A at run time (nothing written) vs base
  --base BASE  (or --model M) alone     one model's numbers, no comparison
  --base BASE --edited-system-instruction TEXT
                                        the prompt baseline: the base model told TEXT in its system prompt
                                        (the edited role) vs the base model without it

Random controls need a neuron set: --neurons, or the neurons.json and alpha recorded in an `hneurons edit`
folder given as --model or --adapter. The base model is loaded once; controls run on it with hooks.
A trained abstention edit (`hneurons edit --mode abstain`: OUT/model or OUT/adapter-lora) gets no hook
controls: scaling random neurons is no control for a trained edit (train a random set the same way and compare
the evals with `hneurons abstain-report`).

Abstention: when hneurons_facts runs for base and edited, eval_results.json gets an `abstention` block
(accuracy, hallucination and abstention rates with paired changes, selectivity, abstention AUROC against base
wrongness, refusal on fabricated entities) and abstention_rc.png (risk-coverage); --detector LOCATE_DIR adds
the probe as an abstention rule on the base answers (its curve, and its AUROC: the ceiling).

Tasks: the bundled offline tasks (group `hneurons`, in <repo>/eval; see eval/README.md) and any built-in
lm-eval task name (truthfulqa_mc2, triviaqa, nq_open, mmlu, hellaswag, arc_easy, wikitext, ...; these need
Hub access or a datasets cache). When every task is local, the run is offline.

Output (--out): eval_results.json (stable schema, read by the model card), lm_eval/<variant>/ (lm-eval's full
results.json and per-sample logs), kl/, eval_deltas.png. A re-run into the same folder skips every variant
already evaluated with the same settings. The equivalent `lm_eval` command of each checkpoint / adapter
variant is printed, so any number can be reproduced without hneurons.

examples:
  hneurons eval --base smollm2-135m-instruct --neurons locate/neurons.json --alpha 0 --limit 50 --out ev
  hneurons eval --model edited/ --base smollm2-135m-instruct --tasks hneurons,arc_easy --out ev
  hneurons eval --base smollm2-135m-instruct --adapter ia3/ --controls 5 --match-layers --out ev
  hneurons eval --base smollm2-135m-instruct --model abstain/model --tasks hneurons_facts,hneurons_nonexist \\
      --detector runs/smollm2/locate --out ev-abstain
  hneurons eval --base smollm2-135m-instruct --tasks hneurons_facts,hneurons_nonexist \\
      --edited-system-instruction "If you do not know the answer, say I don't know." --out ev-prompt
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="lm-eval benchmarks: base vs edited, random controls, KL",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--model", dest="edited", metavar="EDITED",
                      help="the (edited) model: checkpoint folder, Hub id, .gguf or alias")
    add_model_args(parser, flag="--base", metavar="BASE")
    what.add_argument("--adapter", metavar="DIR", help="PEFT adapter folder applied to --base")
    what.add_argument("--neurons", metavar="FILE", help="neuron set (neurons.json) scaled at run time on --base, "
                                                        "or only used for the controls with --model/--adapter")
    what.add_argument("--alpha", type=float, default=None,
                      help="activation scale of the neurons (0 = full suppression, 1 = unchanged; default 0, or "
                           "for the controls of an `hneurons edit` folder the alpha it records)")
    what.add_argument("--force", action="store_true",
                      help="apply a neuron set located in other weights of the same architecture")
    add_arguments(parser, EvalSettings, title="lm-eval, controls, statistics and KL")
    parser.add_argument("--out", metavar="DIR", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace results of other settings in --out")
    add_eval_progress_option(parser)
    add_recipe_option(parser)
    parser.set_defaults(func=run)


def resolve(args) -> SimpleNamespace:
    settings = stage_settings(args, EvalSettings, "eval")
    out = required(args, "out", "--out", in_recipe_output(args, "eval"))
    neurons, alpha = args.neurons, args.alpha
    if args.recipe is not None:  # the recipe's eval: its model as --base, the located neurons at its alpha
        from ..pipeline.run import recipe_alpha

        neurons = neurons or in_recipe_output(args, "locate", NEURONS)
        alpha = alpha if alpha is not None else recipe_alpha(args.recipe, required=False)
    base = args.model or (args.recipe.model.id if args.recipe else None)
    if base is None and args.edited is None:
        base = DEFAULT_MODEL
    return SimpleNamespace(settings=settings, base=base, edited=args.edited, adapter=args.adapter, neurons=neurons,
                           alpha=alpha, out=Path(out))


def run(args) -> int:
    from ..evaluate.bars import eval_progress
    from ..evaluate.lm_eval_run import prepare_environment
    from ..evaluate.stage import evaluate

    plan = resolve(args)
    prepare_environment(plan.settings)  # offline flags before transformers / datasets are imported
    out = plan.out
    with eval_progress(not args.no_progress):
        report = evaluate(base=plan.base, edited=plan.edited, adapter=plan.adapter, neurons=plan.neurons,
                          alpha=plan.alpha, settings=plan.settings, out=out, overwrite=args.overwrite, force=args.force,
                          load=load_options(args))
    print(report.table())
    if report.results.get("abstention"):
        from ..evaluate.abstention import summary_lines

        print("\n" + "\n".join(summary_lines(report.results["abstention"])))
    for key in ("controls_note", "kl_note"):
        if report.results.get(key):
            print(f"\nnote: {report.results[key]}")
    commands = report.results["lm_eval_commands"]
    print("\nreproduce with lm-eval alone (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 for the bundled tasks):")
    for role in ("base", "edited", "controls"):
        if commands.get(role):
            print(f"  {role}: {commands[role]}")
    print(f"\nresults: {Path(out) / EVAL_RESULTS}")
    return 0
