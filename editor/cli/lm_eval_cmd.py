"""`hneurons lm-eval ARGS...`: lm-eval's own command line, with the ``hneurons`` model class registered."""

from __future__ import annotations

import sys

from .common import HELP_FORMATTER

DESCRIPTION = """\
lm-evaluation-harness's `lm_eval` command, unchanged, with hneurons' lm-eval model class `hneurons`
registered first (lm-eval 0.4 has no plugin entry point for model classes). Every argument after
`lm-eval` goes to lm_eval as it stands.

`--model hneurons` is lm-eval's `hf` model (same arguments, tokenisation, chat templates, metrics) with
each multiple-choice prompt run once for all its choices (prefix sharing) and greedy generation by
hneurons' compacting decoder: the numbers are `hf`'s up to float rounding, in less time (benchmarks/
bench_eval.py). `--model_args ...,prefix_sharing=False,compact_decode=False` turns either part off.
`hneurons eval` prints this command for every variant it evaluates, so its numbers can be reproduced
without hneurons' eval code.

examples:
  hneurons lm-eval --model hneurons --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct \\
      --tasks hneurons_knowledge_mc --include_path eval --batch_size 16
  hneurons lm-eval ls tasks
"""


def register(subparsers) -> None:
    # main() hands `lm-eval` and everything after it to run() before argparse sees lm_eval's own flags
    parser = subparsers.add_parser("lm-eval", help="lm-eval's command line with the hneurons model class",
                                   description=DESCRIPTION, formatter_class=HELP_FORMATTER, add_help=False)
    parser.set_defaults(func=lambda args: run([]))


def run(argv: list[str]) -> int:
    import editor.evaluate.lm_eval_model  # noqa: F401  (registers --model hneurons)
    from lm_eval.__main__ import cli_evaluate

    if argv[:1] in (["-h"], ["--help"]):
        print(DESCRIPTION)
        print("lm_eval's own help follows.\n")
    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        result = cli_evaluate()
    except SystemExit as exc:  # argparse's --help and usage errors
        result = exc.code
    finally:
        sys.argv = saved
    return int(result or 0)
