"""`hneurons eval`: lm-eval benchmarks, base vs edited, with random-neuron controls and KL."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import HELP_FORMATTER, add_recipe_option, model_defaults, stage_path

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

Random controls need a neuron set: --neurons, or the neurons.json and alpha recorded in an `hneurons edit`
folder given as --model or --adapter. The base model is loaded once; controls run on it with hooks.

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
"""


def add_loading_args(parser: argparse.ArgumentParser) -> None:
    """How models are loaded (shared by eval and sweep; the model flags themselves differ)."""
    group = parser.add_argument_group("model loading")
    group.add_argument("--revision", help="Hub revision (branch, tag or commit) of a Hub model")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights dtype (auto: the checkpoint's own; GGUF files become float32)")
    group.add_argument("--device", default=None, choices=["cpu", "cuda"],
                       help="where to run: cpu or cuda (one GPU); default: cuda when available, else cpu")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow the checkpoint's own Python code to run (off by default)")
    group.add_argument("--allow-pickle", action="store_true",
                       help="allow pickled .bin weights (refused by default: unpickling can execute code)")
    group.add_argument("--force", action="store_true",
                       help="apply a neuron set located in other weights of the same architecture")


def add_eval_args(parser: argparse.ArgumentParser, default_tasks: str = "hneurons") -> None:
    """lm-eval and statistics settings (shared by eval and sweep)."""
    group = parser.add_argument_group("lm-eval")
    group.add_argument("--tasks", default=default_tasks,
                       help=f"comma-separated lm-eval task or group names (default: {default_tasks})")
    group.add_argument("--limit", type=_limit, default=None,
                       help="items per task: a count, or a fraction < 1 (default: all)")
    group.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    group.add_argument("--include-path", action="append", default=None, metavar="DIR",
                       help="extra folder of lm-eval task YAMLs (repeatable; <repo>/eval is always included)")
    chat = group.add_mutually_exclusive_group()
    chat.add_argument("--chat-template", dest="chat_template", action="store_true", default=None,
                      help="apply the chat template (default: when the tokenizer has one)")
    chat.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                      help="do not apply the chat template")
    group.add_argument("--gen-kwargs", help="generation overrides passed to lm-eval, e.g. max_gen_toks=64")
    group.add_argument("--seed", default="0,1234,1234,1234",
                       help="lm-eval seeds python,numpy,torch,fewshot (default lm-eval's 0,1234,1234,1234)")
    stats = parser.add_argument_group("statistics and KL")
    stats.add_argument("--ci-iters", type=int, default=10_000, help="paired bootstrap resamples (default 10000)")
    stats.add_argument("--match-layers", action="store_true",
                       help="random controls draw the same number of neurons in each layer as the neuron set")
    stats.add_argument("--kl-prompts", default=None, metavar="FILE",
                       help="neutral prompts for the KL measure (JSONL with a 'prompt' field, or one per line; "
                            "default eval/data/neutral_prompts.jsonl)")
    stats.add_argument("--kl-max-prompts", type=int, default=None, help="use only the first N KL prompts")
    stats.add_argument("--kl-new-tokens", type=int, default=32,
                       help="tokens of greedy base-model continuation scored after each prompt (default 32)")
    stats.add_argument("--no-kl", action="store_true", help="skip the KL measure")


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"limit must be a number, got {text!r}") from None
    return int(value) if value >= 1 and value.is_integer() else value


def _seeds(text: str) -> list[int]:
    from ..errors import InputError

    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts *= 4
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--seed must be 1 or 4 integers separated by commas, got {text!r}") from None


def settings_from_args(args, controls: int) -> "EvalSettings":  # noqa: F821
    from ..evaluate import NEUTRAL_PROMPTS, REPO_EVAL_DIR, EvalSettings

    return EvalSettings(
        tasks=args.tasks, limit=args.limit, batch_size=args.batch_size, apply_chat_template=args.chat_template,
        include_paths=[REPO_EVAL_DIR, *(args.include_path or [])], gen_kwargs=args.gen_kwargs,
        seeds=_seeds(args.seed), ci_iters=args.ci_iters, controls=controls,
        control_seed=getattr(args, "control_seed", 0), match_layers=args.match_layers, kl=not args.no_kl,
        kl_prompts=args.kl_prompts or NEUTRAL_PROMPTS, kl_max_prompts=args.kl_max_prompts,
        kl_new_tokens=args.kl_new_tokens)


def load_kwargs_from_args(args) -> dict:
    return {"dtype": args.dtype, "device": args.device, "revision": args.revision,
            "trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="lm-eval benchmarks: base vs edited, random controls, KL",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--model", metavar="EDITED", help="the (edited) model: checkpoint folder, Hub id, .gguf or alias")
    what.add_argument("--base", metavar="BASE", help="the base model the edit is compared with")
    what.add_argument("--adapter", metavar="DIR", help="PEFT adapter folder applied to --base")
    what.add_argument("--neurons", metavar="FILE", help="neuron set (neurons.json) scaled at run time on --base, "
                                                        "or only used for the controls with --model/--adapter")
    what.add_argument("--alpha", type=float, default=None,
                      help="activation scale of the neurons (0 = full suppression, 1 = unchanged; default 0, or "
                           "for the controls of an `hneurons edit` folder the alpha it records)")
    what.add_argument("--controls", type=int, default=3,
                      help="random-neuron control seeds (default 3; 0 = none; needs a neuron set)")
    what.add_argument("--control-seed", type=int, default=0, help="first control seed (default 0)")
    add_eval_args(parser)
    add_loading_args(parser)
    parser.add_argument("--out", metavar="DIR", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace results of other settings in --out")
    add_recipe_option(parser, recipe_defaults, {"out": "--out"})
    parser.set_defaults(func=run)


def recipe_defaults(recipe) -> dict:
    """The recipe's eval: its model as --base, the located neurons at the recipe's alpha, run-time scaled."""
    from .edit_cmd import _recipe_alpha

    e = recipe.eval
    alpha = _recipe_alpha(recipe)
    return {**model_defaults(recipe, dest="base"), "neurons": stage_path(recipe, "locate", "neurons.json"),
            "tasks": ",".join(e.tasks), "limit": e.limit, "batch_size": e.batch_size, "controls": e.controls,
            "control_seed": e.seed, "match_layers": e.match_layers, "ci_iters": max(e.bootstrap, 1),
            "kl_max_prompts": e.kl_prompts, "out": stage_path(recipe, "eval"),
            **({"alpha": alpha} if alpha is not None else {})}


def run(args) -> int:
    from ..evaluate import evaluate, prepare_environment
    from ..loading import DEFAULT_MODEL

    settings = settings_from_args(args, controls=args.controls)
    prepare_environment(settings)  # offline flags before transformers / datasets are imported
    base = args.base if (args.base or args.model) else DEFAULT_MODEL
    report = evaluate(base=base, edited=args.model, adapter=args.adapter, neurons=args.neurons, alpha=args.alpha,
                      settings=settings, out=Path(args.out), overwrite=args.overwrite, force=args.force,
                      load_kwargs=load_kwargs_from_args(args))
    print(report.table())
    commands = report.results["lm_eval_commands"]
    print("\nreproduce with lm-eval alone (HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 for the bundled tasks):")
    for role in ("base", "edited", "controls"):
        if commands.get(role):
            print(f"  {role}: {commands[role]}")
    print(f"\nresults: {Path(args.out) / 'eval_results.json'}")
    return 0
