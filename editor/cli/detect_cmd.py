"""`hneurons detect`."""

from __future__ import annotations

import json
import sys

from ..formats import DETECT_HELDOUT_FORMAT
from ..locate.settings import DetectSettings
from ..options import add_arguments, from_args
from .common import HELP_FORMATTER, add_model_args, load_from_args

DESCRIPTION = """\
Score answers for hallucination risk with a probe from `hneurons locate`. For every (question, answer)
pair the model reads the question (with the collect stage's prompt) and the answer in one teacher-forced
forward pass; the probe turns the CETT features of the answer tokens into a hallucination probability.
A record without an answer is answered first by the model (greedy, as in collect).

Input: JSONL records with "question" and optionally "answer" (other fields are kept). Output: the same
records plus "answer", "hallucination_prob" and "top_neurons" (the H-Neurons that raised the score
most). Records are streamed: memory stays bounded however many records there are.

The probe records the model it was trained on: another model is an error unless --force.

--evaluate DATA measures the detector on questions its collect stage never asked: the model answers
them (greedy), the judge labels the answers right or wrong, and the report gives the probe's AUROC with
a bootstrap 95% CI next to classifiers on the H-Neurons alone and on as many random neurons, refit on
the probe's training features (locate's baseline). --split heldout evaluates on whole question families
that bundled:diverse holds out of training (questions the probe's collect stage already asked are left out:
a locate run whose collect folder has the heldout split reports them itself, under "heldout").

examples:
  hneurons detect --probe runs/smollm2/locate/probe.safetensors --question "What is the capital of Togo?"
  hneurons detect --probe probe.safetensors --question "Who wrote Hamlet?" --answer "Christopher Marlowe"
  hneurons detect --model M --probe probe.safetensors --input qa.jsonl --out scored.jsonl
  hneurons detect --probe runs/smollm2/locate/probe.safetensors --evaluate bundled:facts --split test \\
      --limit 300 --out heldout.json
  hneurons detect --probe runs/smollm2-135m-instruct/locate/probe.safetensors \\
      --evaluate bundled:diverse --split heldout --limit 400 --out heldout-families.json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("detect", help="score answers for hallucination risk with a located probe",
                              description=DESCRIPTION, formatter_class=HELP_FORMATTER)
    add_model_args(p)
    p.add_argument("--probe", required=True, help="probe.safetensors from `hneurons locate`")
    p.add_argument("--input", help="JSONL file of {question, answer?} records")
    p.add_argument("--out", help="output JSONL (default: standard output)")
    p.add_argument("--question", help="score one question (instead of --input)")
    p.add_argument("--answer", help="the answer to score with --question (default: the model answers)")
    ev = p.add_argument_group("held-out evaluation")
    ev.add_argument("--evaluate", metavar="DATA", help="question source to evaluate the detector on (bundled:facts, a "
                                                        "file, ...); questions the probe's collect stage asked are left out")
    ev.add_argument("--split", default="test", help="split of --evaluate: train, validation, test (default) or heldout "
                                                    "(the question families bundled:diverse holds out of training)")
    ev.add_argument("--limit", type=int, default=None, help="questions of --evaluate (a relation-balanced subset)")
    ev.add_argument("--locate", metavar="DIR", help="the probe's locate folder (default: the probe's folder)")
    add_arguments(p, DetectSettings)
    p.add_argument("--force", action="store_true", help="use the probe with a model other than its own")
    p.set_defaults(func=run)


def _read_jsonl(path: str):
    from ..errors import InputError

    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{path} line {number} is not valid JSON: {exc.msg}") from None
    except FileNotFoundError:
        raise InputError(f"input file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def run(args) -> int:
    from ..errors import InputError
    from ..locate.detect import Detector

    settings = from_args(DetectSettings, args)  # a bad value is refused before the model loads
    if args.evaluate:
        return _evaluate(args, settings)
    if bool(args.input) == bool(args.question):
        raise InputError("give either --input FILE, --question TEXT or --evaluate DATA")
    detector = Detector(load_from_args(args), args.probe, force=args.force, settings=settings)
    items = _read_jsonl(args.input) if args.input else [{"question": args.question, "answer": args.answer}]
    scored = detector.score(items, progress=bool(args.input))
    if args.out:
        from ..artifacts import atomic_writer

        with atomic_writer(args.out) as handle:
            for record in scored:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        for record in scored:
            print(json.dumps(record, ensure_ascii=False))
    return 0


def _evaluate(args, settings: DetectSettings) -> int:
    from ..artifacts import atomic_write_json, provenance
    from ..collect.stage import gather_questions
    from ..locate.detect import format_heldout, heldout_report

    questions, data = gather_questions([args.evaluate], [args.split], args.limit)
    report = heldout_report(load_from_args(args), args.probe, questions, locate_dir=args.locate,
                            settings=settings)
    print(format_heldout(report))
    if args.out:
        atomic_write_json(args.out, {"format": DETECT_HELDOUT_FORMAT, "probe": args.probe, "data": data,
                                     **report, "provenance": provenance()})
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
