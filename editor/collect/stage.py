"""Collect: ask factual questions several times, judge the answers, keep the consistent ones.

docs/METHOD.md sections 1-2 (deviations from the paper: section 9). For each question the model gives a
greedy answer and up to ``k`` samples (defaults as the paper: k=10, temperature 1.0, top_p 0.9, top_k 50,
at most 50 new tokens). A question is *consistent* when every sample is judged correct (faithful, label 0)
or every sample wrong (hallucinated, label 1); any uncertain (refusing, hedging) or truncated sample makes
it unusable. The most frequent sample is the representative response; the classes are balanced per split
(every split alike: train, validation, test and, for sources that have it, heldout, the question families held
out of training).

Choices beyond the paper (documented here and in the README):

* Early stop: sampling of a question stops as soon as it can no longer be consistent (it has a correct
  and a wrong sample, or an uncertain or truncated one). ``early_stop=False`` draws all k samples.
* Consistency is decided over the k samples; the greedy answer is recorded but not part of the vote.
* Truncated samples (no end of turn within ``max_new_tokens``) are flagged and never counted as
  consistent, so a refusal or disclaimer after the limit cannot hide in a "confident" answer.
* Reproducibility and resume: questions are processed in fixed chunks of ``batch_size`` questions,
  each sampled with a seed derived from (seed, chunk, round) and written atomically to
  ``chunks/chunk-NNNNN.jsonl``. A killed run redoes at most the chunk it was in, and the final
  ``responses.jsonl`` equals that of an uninterrupted run.

Output (docs/ARTIFACTS.md): ``responses.jsonl`` and the ``collect.json`` manifest.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..artifacts import (
    atomic_write_json,
    atomic_write_text,
    check_no_outside_links,
    clean_stale_temporaries,
    provenance,
    sha256_json,
)
from ..data.judge import judge
from ..data.prompting import Prompt, PromptStyle, build_prompt
from ..data.questions import HELDOUT_SPLIT, Question
from ..errors import InputError, OutputExistsError
from ..formats import (
    CHUNKS,
    COLLECT_FORMAT,
    COLLECT_MANIFEST,
    COLLECT_SETTINGS,
    RESPONSES,
)
from ..locking import locked
from ..model.loading import LoadedModel
from .generation import (
    Generation,
    decode_settings,
    finish_generation,
    generate,
    stop_sets,
)
from .sampler import decode_continuous, prefill, supports_continuous
from .settings import ALL_SPLITS, CollectSettings, heldout_problem

# ------------------------------------------------------------------------------------------ generation


# ---------------------------------------------------------------------------------------------- judging
def _judged(gen: Generation, q: Question) -> dict:
    verdict = judge(gen.text, q.answers, fabricated=q.fabricated, truncated=gen.truncated)
    return {"text": gen.text, "n_tokens": gen.n_tokens, "label": verdict.label, "truncated": gen.truncated}


def _cannot_be_consistent(samples: list[dict]) -> bool:
    labels = {s["label"] for s in samples}
    return "uncertain" in labels or any(s["truncated"] for s in samples) or labels >= {"correct", "wrong"}


def consistency_of(samples: list[dict], k: int) -> str:
    """correct / wrong when all k samples agree; uncertain / mixed otherwise."""
    labels = [s["label"] for s in samples]
    if "uncertain" in labels or any(s["truncated"] for s in samples):
        return "uncertain"
    if "correct" in labels and "wrong" in labels:
        return "mixed"
    if len(labels) < k:
        return "uncertain"
    return labels[0]


# ------------------------------------------------------------------------------------------ answer span
def answer_span(tokenizer: Any, question: Question, gen: Generation, prompt_len: int) -> tuple[int, int, str]:
    """Token span [start, end) of the answer inside prompt + response ids, and how it was found.

    The answer is the response tokens (the end-of-turn token is already cut); for a correct answer it is
    narrowed to the tokens that overlap the matched gold alias, found by decoding prefixes.
    """
    start, end = prompt_len, prompt_len + gen.n_tokens
    verdict = judge(gen.text, question.answers, fabricated=question.fabricated)
    if verdict.label != "correct" or verdict.alias_span is None or question.fabricated:
        return start, end, "response"
    full = tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    offset = len(full) - len(full.lstrip())  # gen.text was stripped
    char_lo, char_hi = verdict.alias_span[0] + offset, verdict.alias_span[1] + offset
    first = last = None
    for i in range(gen.n_tokens):
        lo = len(tokenizer.decode(gen.token_ids[:i], skip_special_tokens=True))
        hi = len(tokenizer.decode(gen.token_ids[: i + 1], skip_special_tokens=True))
        if hi > char_lo and lo < char_hi:
            first = i if first is None else first
            last = i
    if first is None:
        return start, end, "response"
    return prompt_len + first, prompt_len + last + 1, "alias"


def representative(tokenizer: Any, q: Question, prompt: Prompt, gens: list[Generation]) -> dict:
    """The most frequent sample (first occurrence on ties) with its token ids and answer span."""
    counts = Counter(g.text for g in gens)
    best = max(counts.values())
    gen = next(g for g in gens if counts[g.text] == best)
    start, end, how = answer_span(tokenizer, q, gen, len(prompt.input_ids))
    n = len(prompt.input_ids)
    return {"text": gen.text, "count": best, "input_ids": list(prompt.input_ids) + gen.token_ids, "prompt_len": n,
            "response_start": n, "response_end": n + gen.n_tokens,
            "answer_start": start, "answer_end": end, "answer_span": how}


# ------------------------------------------------------------------------------------------- one chunk
def _chunk_seed(seed: int, chunk: int, round_: int) -> int:
    return (seed * 1_000_003 + chunk * 9_176 + round_) % (2**63 - 1)


def _wants_sample(samples: list[dict], in_flight: int, settings: CollectSettings) -> bool:
    return (len(samples) + in_flight < settings.samples
            and not (settings.early_stop and _cannot_be_consistent(samples)))


def _decode_continuously(lm, questions, prompts, settings, state, chunk_index, samples,
                         gens) -> tuple[list[Generation], int]:
    """Greedy answers and samples of a chunk with continuous batching (editor.collect.sampler.decode_continuous):
    greedy rows first, then samples join as rows finish; a question's next sample starts as soon as its
    previous one is judged and it can still be consistent (the early stop);
    free rows go to questions with nothing in flight, and to extra samples of the others only while the
    batch would otherwise be less than half full. Returns the greedy answers and the number of samples."""
    k = settings.samples
    in_flight = [0] * len(questions)
    greedy: list[Generation | None] = [None] * len(questions)
    stops, newline = stop_sets(lm, prompts)

    def refill(free: int) -> list[int]:
        wanting = [i for i in range(len(questions)) if _wants_sample(samples[i], in_flight[i], settings)]
        picked = [i for i in wanting if in_flight[i] == 0][:free]
        running = settings.batch_size - free + len(picked)
        # Extra samples of questions already in flight only to keep the batch at least half full (a tail
        # of a few long answers costs nearly a full step per token); the early stop may waste them.
        while running < settings.batch_size // 2:
            wanting = [i for i in range(len(questions)) if _wants_sample(samples[i], in_flight[i] + picked.count(i),
                                                                           settings)]
            if not wanting:
                break
            wanting.sort(key=lambda i: (len(samples[i]) + in_flight[i] + picked.count(i), i))
            picked += wanting[:settings.batch_size - running]
            running = settings.batch_size - free + len(picked)
        for i in picked:
            in_flight[i] += 1
        return picked

    def on_finish(i: int, tokens: list[int], ended: bool, sampled: bool) -> None:
        gen = finish_generation(lm.tokenizer, tokens, ended, prompts[i].stop_at_newline)
        if not sampled:
            greedy[i] = gen
            return
        in_flight[i] -= 1
        if len(samples[i]) < k:
            samples[i].append(_judged(gen, questions[i]))
            gens[i].append(gen)

    n_sampled = decode_continuous(lm.model, state, decode_settings(settings, True), refill=refill,
                                  on_finish=on_finish, max_rows=settings.batch_size, stop_ids=stops,
                                  stop_token_ids=newline, seed=_chunk_seed(settings.seed, chunk_index, 0),
                                  greedy=range(len(questions)))
    return greedy, n_sampled



def _generate(lm, prompts, settings, *, sample: bool, seed: int | None = None, backend: str = "hf", state=None,
              rows=None) -> list[Generation]:
    """One batched decode on the chosen backend (the same prompts, settings and Generation records)."""
    if backend == "vllm":
        from .vllm_backend import vllm_generate

        return vllm_generate(lm, prompts, settings, sample=sample, seed=settings.seed if seed is None else seed)
    return generate(lm, prompts, settings, sample=sample, seed=seed, state=state, rows=rows)


def _sample_in_rounds(lm, questions, prompts, settings, state, chunk_index, backend, samples, gens) -> int:
    """Samples of a chunk in rounds (one sample per still-active question per round; several when few
    remain): the path for vLLM and for models whose caches cannot take rows mid-way (sliding windows)."""
    k = settings.samples
    round_, generated_rows = 0, 0
    while True:
        active = [i for i in range(len(questions)) if _wants_sample(samples[i], 0, settings)]
        if not active:
            break
        # Fill the batch: several samples per still-active question when few remain.
        per_question = max(1, min(settings.batch_size // len(active), k))
        rows = [i for i in active for _ in range(min(per_question, k - len(samples[i])))]
        for start in range(0, len(rows), settings.batch_size):
            batch = rows[start:start + settings.batch_size]
            outs = _generate(lm, [prompts[i] for i in batch], settings, sample=True,
                            seed=_chunk_seed(settings.seed, chunk_index, round_), backend=backend, state=state,
                            rows=batch if state is not None else None)
            round_ += 1
            generated_rows += len(batch)
            for i, gen in zip(batch, outs):
                if len(samples[i]) < k:
                    samples[i].append(_judged(gen, questions[i]))
                    gens[i].append(gen)
    return generated_rows


def collect_chunk(lm: LoadedModel, questions: Sequence[Question], settings: CollectSettings,
                  style: PromptStyle, chunk_index: int, backend: str = "hf") -> tuple[list[dict], dict]:
    """Greedy answers and early-stopped samples for one chunk of questions; returns records and stats."""
    k = settings.samples
    prompts = [build_prompt(lm.tokenizer, q.question, style) for q in questions]
    # One prompt pass for the greedy answers and every sample round (vLLM caches prompts itself).
    state = prefill(lm.model, [p.input_ids for p in prompts], lm.tokenizer.pad_token_id) if backend == "hf" else None
    samples: list[list[dict]] = [[] for _ in questions]
    gens: list[list[Generation]] = [[] for _ in questions]
    if state is not None and supports_continuous(state):
        greedy, sampled = _decode_continuously(lm, questions, prompts, settings, state, chunk_index, samples, gens)
    else:
        greedy = _generate(lm, prompts, settings, sample=False, backend=backend, state=state)
        sampled = _sample_in_rounds(lm, questions, prompts, settings, state, chunk_index, backend, samples, gens)
    generated_rows = len(questions) + sampled
    records = []
    for i, q in enumerate(questions):
        consistency = consistency_of(samples[i], k)
        record = q.to_dict() | {
            "prompt": prompts[i].text,
            "greedy": _judged(greedy[i], q),
            "samples": samples[i],
            "n_samples": len(samples[i]),
            "early_stopped": len(samples[i]) < k,
            "consistency": consistency,
            "hallucinated": {"correct": 0, "wrong": 1}.get(consistency),
            "selected": False,
            "representative": None,
        }
        if consistency in ("correct", "wrong"):
            rep = representative(lm.tokenizer, q, prompts[i], gens[i])
            if rep["answer_end"] <= rep["answer_start"]:  # empty answer: nothing to take features from
                record.update(consistency="uncertain", hallucinated=None)
            else:
                record["representative"] = rep
        records.append(record)
    stats = {"generations": generated_rows, "generations_without_early_stop": len(questions) * (k + 1),
             "generated_tokens": sum(g.n_tokens for g in greedy) + sum(g.n_tokens for gs in gens for g in gs)}
    return records, stats


# ----------------------------------------------------------------------------------------- the stage
@dataclass
class CollectResult:
    out_dir: Path
    records: list[dict]
    manifest: dict
    resumed_chunks: int = 0

    @property
    def responses_path(self) -> Path:
        return self.out_dir / RESPONSES


def balance(records: list[dict], seed: int) -> None:
    """Mark ``selected``: equal numbers of consistently-correct and -wrong questions per split and set."""
    groups: dict[tuple, dict[int, list[int]]] = {}
    for i, r in enumerate(records):
        if r["hallucinated"] is not None:
            groups.setdefault((r["split"], r["fabricated"]), {0: [], 1: []})[r["hallucinated"]].append(i)
    for key in sorted(groups):
        by_class = groups[key]
        n = min(len(by_class[0]), len(by_class[1]))
        rng = random.Random(f"{seed}-{key}")
        for members in by_class.values():
            for i in sorted(rng.sample(members, n)):
                records[i]["selected"] = True


def summarize(records: list[dict]) -> dict:
    per_split: dict[str, Counter] = {}
    for r in records:
        c = per_split.setdefault(("nonexist/" if r["fabricated"] else "") + r["split"], Counter())
        c["questions"] += 1
        c[r["consistency"]] += 1
        c["greedy_" + r["greedy"]["label"]] += 1
        if r["selected"]:
            c["selected_" + ("hallucinated" if r["hallucinated"] else "faithful")] += 1
        c["truncated_samples"] += sum(s["truncated"] for s in r["samples"])
    return {k: dict(sorted(v.items())) for k, v in sorted(per_split.items())}


def _settings_record(lm: LoadedModel, questions: Sequence[Question], data: dict, settings: CollectSettings,
                     style: PromptStyle, balance_seed: int, backend: str = "hf", auto_batch: bool = False) -> dict:
    record = {
        "model": {k: v for k, v in lm.identity().items()},
        "data": data,
        "questions_sha256": sha256_json([q.to_dict() for q in questions]),
        "n_questions": len(questions),
        "sampling": settings.sampling_record(),
        "prompt": style.settings(lm.tokenizer),
        "balance_seed": balance_seed,
    }
    # Recorded only when not the default, so that folders written before these options still resume.
    if auto_batch:
        record["sampling"]["batch_size_auto"] = True
    if backend != "hf":
        record["backend"] = backend
    return record


def resolved_batch_size(lm: LoadedModel, questions: Sequence[Question], settings: CollectSettings,
                        style: PromptStyle, out: Path) -> int:
    """The batch size to use: the number given, or for ``"auto"`` the one an earlier run of this output
    folder chose (so that a resume makes the same chunks), else one that fits the free GPU memory."""
    from ..model.batching import AUTO, resolve_batch_size

    if settings.batch_size != AUTO:
        return int(settings.batch_size)
    previous = out / COLLECT_SETTINGS
    if previous.is_file():
        sampling = json.loads(previous.read_text(encoding="utf-8")).get("sampling", {})
        if sampling.get("batch_size_auto") and isinstance(sampling.get("batch_size"), int):
            return sampling["batch_size"]
    longest = max(len(build_prompt(lm.tokenizer, q.question, style).input_ids) for q in questions)
    return resolve_batch_size(AUTO, lm, "generation", longest + settings.max_new_tokens)


def _prepare_out_dir(out: Path, settings_record: dict, overwrite: bool) -> None:
    """Create ``out`` or check that what is in it was made with the same settings (resume)."""
    check_no_outside_links(out)
    path = out / COLLECT_SETTINGS
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if sha256_json(previous) != sha256_json(settings_record):
            if not overwrite:
                changed = sorted(k for k in settings_record if previous.get(k) != settings_record[k])
                raise OutputExistsError(
                    f"{out} holds a collect run with other settings (changed: {', '.join(changed)}); use another "
                    f"--out, or --overwrite to discard it"
                )
            for stale in [out / RESPONSES, out / COLLECT_MANIFEST, *sorted((out / CHUNKS).glob("chunk-*.jsonl"))]:
                stale.unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {out} exists and is not a collect folder; use another --out or "
                                f"--overwrite")
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out)
    clean_stale_temporaries(out / CHUNKS)
    atomic_write_json(path, settings_record)


@locked("out_dir")
def collect(
    lm: LoadedModel,
    questions: Sequence[Question],
    out_dir: str | Path,
    settings: CollectSettings | None = None,
    *,
    data: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **fields: Any,
) -> CollectResult:
    """Run (or resume) the collect stage into ``out_dir``; see the module docstring.

    ``settings`` (:class:`~editor.collect.settings.CollectSettings`, whose fields may also be given as keywords)
    say how answers are sampled and prompted; ``questions`` come from :func:`gather_questions` (or
    :func:`questions_for` the settings' own data sources). ``settings.backend``: ``hf`` (the compacting decoder
    of :mod:`editor.collect.sampler`) or ``vllm`` (vLLM's engine on CUDA, optional:
    :mod:`editor.collect.vllm_backend`). Classes are balanced with ``settings.seed``.
    """
    settings = CollectSettings.of(settings, **fields)
    style, balance_seed, backend = settings.prompt(), settings.seed, settings.backend
    if backend == "vllm":
        from .vllm_backend import require_vllm

        require_vllm()
    check_questions(questions)
    out = Path(out_dir)
    auto_batch = settings.batch_size == "auto"
    settings = settings.model_copy(update={"batch_size": resolved_batch_size(lm, questions, settings, style, out)})
    record = _settings_record(lm, questions, data or {}, settings, style, balance_seed, backend, auto_batch)
    _prepare_out_dir(out, record, overwrite)
    if (out / COLLECT_MANIFEST).is_file() and (out / RESPONSES).is_file():
        manifest = json.loads((out / COLLECT_MANIFEST).read_text(encoding="utf-8"))
        records = [json.loads(line) for line in (out / RESPONSES).read_text(encoding="utf-8").splitlines()]
        return CollectResult(out, records, manifest, resumed_chunks=manifest["chunks"])

    started = time.time()
    (out / CHUNKS).mkdir(exist_ok=True)
    bs = settings.batch_size
    chunks = [list(questions[i:i + bs]) for i in range(0, len(questions), bs)]
    records: list[dict] = []
    totals: Counter = Counter()
    resumed = 0
    bar = _progress(len(questions), progress)
    for index, chunk in enumerate(chunks):
        path = out / CHUNKS / f"chunk-{index:05d}.jsonl"
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            chunk_records, stats = [json.loads(x) for x in lines[1:]], json.loads(lines[0])
            resumed += 1
        else:
            chunk_records, stats = collect_chunk(lm, chunk, settings, style, index, backend)
            atomic_write_text(path, "\n".join(json.dumps(x, ensure_ascii=False) for x in [stats, *chunk_records]) + "\n")
        records.extend(chunk_records)
        totals.update(stats)
        _advance(bar, len(chunk), records)
    if bar is not None:
        bar.close()

    balance(records, balance_seed)
    counts = summarize(records)
    manifest = {
        "format": COLLECT_FORMAT,
        **record,
        "counts": counts,
        "chunks": len(chunks),
        "resumed_chunks": resumed,
        "generations": dict(totals),
        "early_stop_saving": 1 - totals["generations"] / max(1, totals["generations_without_early_stop"]),
        "wall_time_s": round(time.time() - started, 2),
        "provenance": provenance(),
    }
    atomic_write_text(out / RESPONSES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_json(out / COLLECT_MANIFEST, manifest)
    for path in (out / CHUNKS).glob("chunk-*.jsonl"):
        path.unlink()
    (out / CHUNKS).rmdir()
    return CollectResult(out, records, manifest, resumed_chunks=resumed)


def load_responses(folder: str | Path) -> tuple[list[dict], dict]:
    """Read a finished collect folder (records, manifest), with clear errors for anything else."""
    from ..artifacts import read_json

    root = Path(folder)
    manifest = read_json(root / COLLECT_MANIFEST, "collect manifest")
    path = root / RESPONSES
    if not path.is_file():
        raise InputError(f"{root} has no {RESPONSES}: run `hneurons collect` into it first")
    records = []
    offset = 0
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        try:
            records.append(json.loads(raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise InputError(f"{path} line {number} is not UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset "
                             f"{offset + exc.start} of the file)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {number} is not valid JSON: {exc.msg} (byte offset "
                             f"{offset + exc.pos} of the file)") from None
        offset += len(raw)
    return records, manifest


# ------------------------------------------------------------------------------------------- progress
def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="collect", unit="q", dynamic_ncols=True)


def _advance(bar, n: int, records: list[dict]) -> None:
    if bar is None:
        return
    bar.update(n)
    judged = [r["greedy"]["label"] for r in records if not r["fabricated"]]
    if judged:
        bar.set_postfix(greedy_acc=f"{judged.count('correct') / len(judged):.2f}",
                        consistent=sum(r["hallucinated"] is not None for r in records))


# -------------------------------------------------------------------------------------- question input
def stratified_subset(questions: Sequence[Question], n: int | None, seed: int = 0) -> list[Question]:
    """``n`` questions spread evenly over the relations (round robin over seeded shuffles), in file order.

    Bundled files are ordered by entity type (countries, then cities, then elements); the first N rows
    would cover only a few relations, so a limit takes a relation-balanced sample instead.
    """
    if n is None or n >= len(questions):
        return list(questions)
    by_relation: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_relation.setdefault(q.relation, []).append(i)
    queues = []
    for relation in sorted(by_relation):
        members = by_relation[relation][:]
        random.Random(f"{seed}-{relation}").shuffle(members)
        queues.append(members)
    picked: list[int] = []
    while len(picked) < n:
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return [questions[i] for i in sorted(picked)]


def gather_questions(data: Sequence[str], splits: Sequence[str], limit: int | dict | None = None,
                     seed: int = 0, **loader_kwargs) -> tuple[list[Question], dict]:
    """Questions of every source and split, in a fixed order, and what the manifest records about them.

    ``limit`` (N, or per split) takes a relation-balanced seeded subset (:func:`stratified_subset`). ``heldout``
    (whole question families held out of training) is a split only of the sources that have one
    (:func:`editor.collect.settings.has_heldout`); asking another source for it is one :class:`InputError` that
    names the source, raised before any question is read.
    """
    from ..data.questions import dataset_fingerprint, load_questions

    unknown = set(splits) - set(ALL_SPLITS)
    if unknown or not splits:
        raise InputError(f"splits must be among {', '.join(ALL_SPLITS)}; got {', '.join(splits) or 'none'}")
    problem = heldout_problem(data) if HELDOUT_SPLIT in splits else None
    if problem:  # every source checked before any question is read (and before any model loads)
        raise InputError(problem)
    questions: list[Question] = []
    seen: dict[str, str] = {}
    sources = []
    for spec in data:
        for split in splits:
            n = limit.get(split) if isinstance(limit, dict) else limit
            for q in stratified_subset(load_questions(spec, split=split, **loader_kwargs), n, seed):
                if q.id in seen:
                    raise InputError(f"question id {q.id!r} appears in both {seen[q.id]} and {spec}")
                seen[q.id] = spec
                questions.append(q)
        sources.append({"spec": spec, "sha256": dataset_fingerprint(spec)})
    return questions, {"sources": sources, "splits": list(splits), "limit": limit, "subset_seed": seed}


def format_summary(manifest: dict) -> str:
    cols = ["questions", "correct", "wrong", "mixed", "uncertain", "selected_faithful", "selected_hallucinated"]
    lines = [f"{'split':<22}" + "".join(f"{c:>22}" for c in cols)]
    for split, counts in manifest["counts"].items():
        lines.append(f"{split:<22}" + "".join(f"{counts.get(c, 0):>22}" for c in cols))
    lines.append(f"early stop saved {manifest['early_stop_saving']:.0%} of generations; "
                 f"wall time {manifest['wall_time_s']:.0f} s")
    return "\n".join(lines)


def questions_for(settings: CollectSettings) -> tuple[list[Question], dict]:
    """The questions a collect run with ``settings`` asks (its data sources, splits and limit); none is an error
    (before any model loads)."""
    questions, data = gather_questions(settings.data, settings.splits, settings.limit, seed=settings.seed,
                                       question_column=settings.question_column,
                                       answers_column=settings.answers_column)
    check_questions(questions, f"data {', '.join(settings.data)}, splits {', '.join(settings.splits)}, limit "
                               f"{settings.limit}")
    return questions, data


def check_questions(questions: Sequence[Question], selected: str = "the dataset, split or limit") -> None:
    if not questions:
        raise InputError(f"no questions to collect: {selected} selected 0 rows")
