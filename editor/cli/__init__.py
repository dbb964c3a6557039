"""The ``hneurons`` command: one subcommand per pipeline stage, each a thin layer over the Python API.

Every subcommand lives in its own module here and exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed arguments, returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import HNeuronsError

# Order is the order of `hneurons --help`: the pipeline first, then tools.
COMMAND_MODULES = [
    "run_cmd",
    "collect_cmd",
    "locate_cmd",
    "detect_cmd",
    "origin_cmd",
    "edit_cmd",
    "eval_cmd",
    "sweep_cmd",
    "dose_cmd",
    "abstain_report_cmd",
    "card_cmd",
    "push_cmd",
    "recipe_cmd",
    "inspect_cmd",
    "judge_check_cmd",
    "lm_eval_cmd",
]

DESCRIPTION = """\
hneurons finds the few feed-forward neurons whose activity predicts hallucinations ("H-Neurons",
Gao et al., arXiv 2512.01797) in a Hugging Face causal language model, rewrites the model to suppress
them, measures what that changes with lm-evaluation-harness, and publishes the result.

The pipeline, one command per stage, or all of them with `hneurons run RECIPE`:
  collect  ask factual questions several times; keep consistently right / wrong answers
  locate   CETT features per neuron, sparse L1 probe, the H-Neuron set and a detection report
  sweep    evaluate suppression strengths (alpha) on validation tasks; choose one under retention limits
  edit     write the fixed model: patched safetensors checkpoint, or an exact IA3 / LoRA adapter
  eval     lm-eval benchmarks, base vs edited, with random-neuron controls and CIs
  dose-response  every metric vs alpha for the H-Neurons and matched random sets: slopes compared
  abstain-report  abstention of several evals of one base model side by side (selectivity, AUROC)
  card     write the model card (metadata, evidence, limitations, how to reproduce)
  push     publish the fixed model with its card to the Hugging Face Hub
Tools: detect (score answers for hallucination risk with a probe), origin (compare with the base
model), recipe (validate / show a recipe), inspect (how hneurons sees a model), judge-check (the
judges' agreement with hand-labelled responses), lm-eval (lm-eval's command line with the hneurons
model class).

MODEL arguments accept a Hub repo id, a local checkpoint folder, a .gguf file, or an embedded
alias (smollm2-135m-instruct, gemma3-270m) that works without Hub access.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hneurons",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `hneurons COMMAND --help` for the details of one command.",
    )
    parser.add_argument("--version", action="version", version=f"hneurons {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details (and show tracebacks)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


class _ExpectedLmEvalWarnings(logging.Filter):
    """Drops lm-eval warnings that every hneurons evaluation triggers by design and that ask nothing of
    the user: the bundled tasks build their data with a Python function (lm-eval suggests --metadata), and
    hneurons hands lm-eval an already-loaded model (lm-eval warns that it is not a path)."""

    EXPECTED = ("Custom kwargs can be passed to `--metadata`", "`pretrained` model kwarg is not of type `str`",
                "Passed an already-initialized model through `pretrained`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("lm_eval") and any(e in record.getMessage() for e in self.EXPECTED))


def parse(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The parsed command line, with the subcommand's parser (for usage errors) and its ``--recipe`` loaded."""
    parser = parser or build_parser()
    return prepared(parser.parse_args(argv), parser)


def prepared(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    args.recipe = None
    if getattr(args, "command", None):
        args.subparser = parser._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001 (no public API)
        if getattr(args, "recipe_file", None):
            from ..pipeline.recipe import load_recipe

            args.recipe = load_recipe(args.recipe_file)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"]:
        from .lm_eval_cmd import run as lm_eval_passthrough

        return lm_eval_passthrough(argv[1:])  # lm_eval parses its own flags
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # lm-eval narrates every task at INFO level; keep its warnings and errors
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, _ExpectedLmEvalWarnings) for f in handler.filters):
                handler.addFilter(_ExpectedLmEvalWarnings())
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(prepared(args, parser).func(args) or 0)
    except HNeuronsError as exc:
        if args.verbose:
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # one line, always
        print(f"hneurons {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hneurons {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130
