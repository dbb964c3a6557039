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
    "collect_cmd",
    "locate_cmd",
    "detect_cmd",
    "origin_cmd",
    "edit_cmd",
    "eval_cmd",
    "sweep_cmd",
    "card_cmd",
    "push_cmd",
    "recipe_cmd",
    "inspect_cmd",
]

DESCRIPTION = """\
hneurons finds the few feed-forward neurons whose activity predicts hallucinations ("H-Neurons",
Gao et al., arXiv 2512.01797) in a Hugging Face causal language model, rewrites the model to suppress
them, measures what that changes with lm-evaluation-harness, and publishes the result.

The pipeline, one command per stage (or all of them with `hneurons run RECIPE`):
  collect  ask factual questions several times; keep consistently right / wrong answers
  locate   CETT features per neuron, sparse L1 probe, the H-Neuron set and a detection report
  edit     write the fixed model: patched safetensors checkpoint, or an IA3 / LoRA adapter
  eval     lm-eval benchmarks, base vs edited, with a random-neuron control
  push     publish the fixed model with its model card to the Hugging Face Hub

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except HNeuronsError as exc:
        if args.verbose:
            raise
        print(f"hneurons {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hneurons {args.command}: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130
