"""`hneurons inspect MODEL`."""

from __future__ import annotations

import json

from .common import HELP_FORMATTER, add_model_args, load_options

DESCRIPTION = """\
Show how hneurons sees a model: its architecture, number of decoder layers, FFN width (d_ff), the
total number of FFN neurons (layers x d_ff), parameter count, dtype, and where the FFN modules are.
Only the config is read (parameters are counted on PyTorch's meta device), so this is instant even for
70B models.

examples:
  hneurons inspect smollm2-135m-instruct
  hneurons inspect meta-llama/Llama-3.1-8B-Instruct --json
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("inspect", help="show layers, d_ff, FFN neurons and module paths of a model",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    add_model_args(parser, flag=None)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..model.info import inspect_model

    options = load_options(args)
    info = inspect_model(args.model, revision=options.revision, trust_remote_code=options.trust_remote_code)
    print(json.dumps(info.as_dict(), indent=2) if args.json else info.render())
    return 0
