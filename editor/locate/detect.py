"""Detect: the locate stage's probe as a run-time hallucination detector.

Given (question, answer) pairs, or questions alone (the model then answers first, with the prompt and
greedy decoding of the collect stage), the detector runs one teacher-forced forward pass per batch,
computes the probe's CETT features exactly as locate does (same span, aggregation and storage
rounding), and returns the hallucination probability of every answer together with the H-Neurons
that pushed it up most.

The probe records the model it was trained on; using it with a model whose weights differ is an
error unless ``force=True`` (the origin analysis does that on purpose, on a base model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data.prompting import PromptStyle, build_prompt
from ..errors import InputError
from ..formats import ANSWER_SIGNALS
from ..model.loading import LoadedModel
from . import baselines
from .features import cett_features
from .settings import DetectSettings
from .stage import FittedProbe, check_same_model, load_probe

_STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class Detection:
    hallucination_prob: float
    logit: float
    top_neurons: list[dict]  # H-Neurons with the largest positive contributions to the logit


# The sequence length ``batch_size="auto"`` sizes batches for: a chat prompt with a short factual question
# plus a 50-token answer stays well below it, so the estimate errs on the safe side.
_AUTO_SEQ_LEN = 256


def stream_batch_size(lm: LoadedModel, batch_size: int | str) -> int:
    """Answers per batch: ``batch_size``, or for ``"auto"`` the largest batch whose greedy answers and
    teacher-forced pass both fit the free GPU memory (editor.model.batching; 8 on the CPU)."""
    from ..model.batching import resolve_batch_size

    return min(resolve_batch_size(batch_size, lm, "generation", _AUTO_SEQ_LEN),
               resolve_batch_size(batch_size, lm, "features", _AUTO_SEQ_LEN))


class Detector:
    """A probe bound to a model. ``score_records`` is the exact path; ``score`` the convenient one.

    ``settings`` (:class:`~editor.locate.settings.DetectSettings`, or its fields as keywords): the batch size
    (answers per batch for generation and the teacher-forced pass, or ``"auto"``)."""

    def __init__(self, lm: LoadedModel, probe_path: str, *, force: bool = False, style: PromptStyle = PromptStyle(),
                 settings: DetectSettings | None = None, top_k: int = 5, **fields: Any):
        batch_size = DetectSettings.of(settings, **fields).batch_size
        self.lm = lm
        self.probe, self.meta = load_probe(probe_path)
        check_same_model(self.meta["model"], lm, f"probe {probe_path}", force)
        if self.probe.weight.numel() != lm.num_layers * lm.d_ff:
            raise InputError(f"probe {probe_path} has {self.probe.weight.numel()} weights; the model has "
                             f"{lm.num_layers * lm.d_ff} FFN neurons")
        self.style, self.batch_size, self.top_k = style, stream_batch_size(lm, batch_size), top_k
        self.round_to = _STORE_DTYPES.get(self.meta.get("store_dtype", "float16"), torch.float16)
        self.positive = torch.nonzero(self.probe.weight > 0).flatten()

    # ------------------------------------------------------------------ exact path (token ids given)
    def score_records(self, records: Sequence[dict]) -> Iterator[tuple[str, Detection]]:
        """Score collect-style records (``representative`` with ``input_ids`` and span fields)."""
        span = self.meta.get("span", "response")
        for ids, feats in cett_features(self.lm, records, self.meta.get("aggregate", "mean"), self.batch_size, span):
            x = feats[:, 0].to(self.round_to).float()  # locate reads features back from fp16 shards
            for rid, row in zip(ids, x):
                yield rid, self._detection(row)

    def _detection(self, x: torch.Tensor) -> Detection:
        p: FittedProbe = self.probe
        z = (x - p.standardiser.mean) / p.standardiser.std
        logit = float(z @ p.weight + p.bias)
        contrib = z[self.positive] * p.weight[self.positive]
        order = torch.argsort(contrib, descending=True)[: self.top_k]
        d_ff = self.lm.d_ff
        top = [{"layer": int(f) // d_ff, "index": int(f) % d_ff, "contribution": round(float(c), 4)}
               for f, c in zip(self.positive[order].tolist(), contrib[order].tolist()) if c > 0]
        return Detection(float(torch.sigmoid(torch.tensor(logit))), logit, top)

    # ---------------------------------------------------------------- convenient path (text given)
    def record_for(self, question: str, answer: str, rid: str = "0") -> dict:
        prompt = build_prompt(self.lm.tokenizer, question, self.style)
        answer_ids = self.lm.tokenizer(answer.strip(), add_special_tokens=False)["input_ids"]
        if not answer_ids:
            raise InputError(f"record {rid!r}: the answer is empty; nothing to score")
        n = len(prompt.input_ids)
        return {"id": rid, "representative": {"input_ids": list(prompt.input_ids) + list(answer_ids),
                                              "response_start": n, "response_end": n + len(answer_ids),
                                              "answer_start": n, "answer_end": n + len(answer_ids)}}

    def answer(self, questions: Sequence[str], max_new_tokens: int = 50) -> list[str]:
        """Greedy answers with collect's prompt (for inputs that carry no answer)."""
        from ..collect.generation import generate
        from ..collect.settings import CollectSettings

        prompts = [build_prompt(self.lm.tokenizer, q, self.style) for q in questions]
        gens = generate(self.lm, prompts, CollectSettings(max_new_tokens=max_new_tokens), sample=False)
        return [g.text for g in gens]

    def score(self, items: Iterable[dict], progress: bool = False) -> Iterator[dict]:
        """Stream ``items`` ({"question", optional "answer", ...}) to output records with
        ``answer``, ``hallucination_prob`` and ``top_neurons``; memory stays bounded by one batch."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc="detect", unit="answer", dynamic_ncols=True)
        batch: list[dict] = []
        seen = 0
        try:
            for item in items:
                seen += 1
                if not isinstance(item, dict) or not str(item.get("question", "")).strip():
                    raise InputError(f"input record {seen} has no 'question'")
                batch.append(item)
                if len(batch) == self.batch_size:
                    yield from self._score_batch(batch, seen - len(batch))
                    if bar is not None:
                        bar.update(len(batch))
                    batch = []
            if batch:
                yield from self._score_batch(batch, seen - len(batch))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:  # closed on errors too, so an error message starts on a line of its own
                bar.close()

    def _score_batch(self, items: list[dict], offset: int) -> Iterator[dict]:
        missing = [i for i, it in enumerate(items) if not str(it.get("answer") or "").strip()]
        if missing:
            answers = self.answer([items[i]["question"] for i in missing])
            for i, a in zip(missing, answers):
                items[i] = dict(items[i], answer=a, answer_generated=True)
        records = [self.record_for(it["question"], it["answer"], str(offset + i)) for i, it in enumerate(items)]
        for item, (_, det) in zip(items, self.score_records(records)):
            yield dict(item, hallucination_prob=round(det.hallucination_prob, 6), top_neurons=det.top_neurons)


def generate_with_detection(detector: Detector, question: str, *, threshold: float = 0.5, retries: int = 0,
                            temperature: float = 0.7, seed: int = 0, max_new_tokens: int = 50) -> dict[str, Any]:
    """Answer a question, score the finished answer, and optionally regenerate while it is flagged.

    Returns ``{"answer", "hallucination_prob", "flagged", "attempts"}`` for the accepted (or last)
    answer. Retries sample (temperature ``temperature``) with seeds ``seed + attempt``.
    """
    from ..collect.generation import generate
    from ..collect.settings import CollectSettings

    prompt = build_prompt(detector.lm.tokenizer, question, detector.style)
    attempts = []
    for attempt in range(retries + 1):
        settings = CollectSettings(max_new_tokens=max_new_tokens, temperature=temperature)
        gen = generate(detector.lm, [prompt], settings, sample=attempt > 0, seed=seed + attempt)[0]
        if not gen.token_ids:
            prob = 1.0
        else:
            n = len(prompt.input_ids)
            rec = {"id": str(attempt), "representative": {"input_ids": prompt.input_ids + gen.token_ids,
                                                          "response_start": n, "response_end": n + gen.n_tokens,
                                                          "answer_start": n, "answer_end": n + gen.n_tokens}}
            prob = next(detector.score_records([rec]))[1].hallucination_prob
        attempts.append({"answer": gen.text, "hallucination_prob": prob})
        if prob < threshold:
            break
    final = attempts[-1]
    return {**final, "flagged": final["hallucination_prob"] >= threshold, "attempts": attempts}


# --------------------------------------------------------------------------------- held-out evaluation
def heldout_report(lm: LoadedModel, probe_path: str, questions: Sequence, *, locate_dir: str | None = None,
                   style: PromptStyle = PromptStyle(), settings: DetectSettings | None = None, bootstrap: int = 1000, seed: int = 0,
                   max_new_tokens: int = 50, progress: bool = False) -> dict:
    """How well the probe separates the model's wrong answers from its right ones on new questions.

    The model answers every question greedily (collect's prompt); the judge labels each answer correct (0)
    or wrong (1) and drops hedged, refusing and truncated ones; the probe scores the answers from one
    teacher-forced pass. The same answers are scored by the classifiers of locate's baseline, refit on the
    probe's training features: on the H-Neurons alone and on as many random neurons (locate's draws: matched
    per layer, the same seeds). Returns AUROCs with stratified bootstrap 95% CIs. Questions the probe's collect
    stage asked are excluded, so the probe never saw any of them.

    The trivial baselines of :mod:`editor.locate.baselines` (answer length, question family, both, the model's
    mean token log-probability of the answer) are fitted on the probe's training responses (their
    log-probabilities from the locate folder's ``answer_signals.json``, or computed when it has none) and scored
    on the same judged answers: ``baselines`` (AUROCs, the probe's and the H-Neuron classifier's margins with
    paired CIs, ``fails_to_beat``, ``statement``) and ``length_matched``. A family absent from training gets the
    training rate of all families.
    """
    from .. import stats
    from ..collect.generation import generate
    from ..collect.settings import CollectSettings
    from ..collect.stage import load_responses
    from ..data.judge import judge
    from .origin import instruct_training
    from .stage import random_columns, refit_on, splits_of

    detector = Detector(lm, probe_path, style=style, settings=settings)
    batch_size = detector.batch_size  # "auto" resolved
    locate_dir = locate_dir or str(Path(probe_path).parent)
    train = instruct_training(Path(locate_dir), detector.meta, None)
    collected = load_responses(train.report["responses"]["folder"])[0]
    seen = {str(r["id"]) for r in collected}
    fresh = [q for q in questions if str(q.id) not in seen and not q.fabricated]
    if not fresh:
        raise InputError("every given question was already asked by the probe's collect stage: nothing held out")
    records, labels, kept = [], [], []
    settings = CollectSettings(max_new_tokens=max_new_tokens)
    for start in range(0, len(fresh), batch_size):
        batch = fresh[start:start + batch_size]
        prompts = [build_prompt(lm.tokenizer, q.question, style) for q in batch]
        for q, prompt, gen in zip(batch, prompts, generate(lm, prompts, settings, sample=False)):
            verdict = judge(gen.text, q.answers, truncated=gen.truncated)
            if verdict.label == "uncertain" or not gen.token_ids:
                continue
            n = len(prompt.input_ids)
            records.append({"id": q.id, "representative": {
                "input_ids": list(prompt.input_ids) + gen.token_ids, "response_start": n,
                "response_end": n + gen.n_tokens, "answer_start": n, "answer_end": n + gen.n_tokens}})
            labels.append(int(verdict.label == "wrong"))
            kept.append({"id": q.id, "relation": q.relation, "answer": gen.text, "hallucinated": labels[-1]})
    y = np.array(labels)
    if len(y) == 0 or y.min() == y.max():
        raise InputError(f"the model's {len(y)} judged answers are {int((y == 0).sum())} right and {int(y.sum())} "
                         f"wrong: AUROC needs both; give more questions")
    rounding = detector.round_to
    x = torch.cat([f[:, 0].to(rounding).float() for _, f in cett_features(
        lm, records, detector.meta.get("aggregate", "mean"), batch_size, detector.meta.get("span", "response"))])

    def auroc_ci(scores):
        lo, hi = stats.bootstrap_ci(stats.auroc, scores, y, n_boot=bootstrap, seed=seed, stratify=y)
        return {"auroc": stats.auroc(scores, y), "auroc_ci95": [lo, hi]}

    probe_scores = detector.probe.scores(x)
    for item, p in zip(kept, 1 / (1 + np.exp(-probe_scores))):
        item["hallucination_prob"] = round(float(p), 6)
    h_cols = detector.positive
    result = {"n": len(y), "n_hallucinated": int(y.sum()), "n_questions": len(fresh),
              "n_dropped_uncertain": len(fresh) - len(y), "probe": auroc_ci(probe_scores), "answers": kept}
    classifiers, random_scores = {"probe": probe_scores}, []
    if len(h_cols):
        classifiers["h_neurons_only"] = refit_on(h_cols, train.x, train.y, detector.probe.C).scores(x[:, h_cols])
        result["h_neurons_only"] = auroc_ci(classifiers["h_neurons_only"])
        for d in range(train.random_draws):  # locate's draws: matched per layer, seeds seed + d
            cols = random_columns(x.shape[1], len(h_cols), h_cols, train.seed + d, lm.d_ff)
            random_scores.append(refit_on(cols, train.x, train.y, detector.probe.C).scores(x[:, cols]))
        draws = [stats.auroc(s, y) for s in random_scores]
        result["random"] = {"draws": len(draws), "auroc_mean": float(np.mean(draws)), "auroc_std": float(np.std(draws)),
                            "auroc_min": float(np.min(draws)), "auroc_max": float(np.max(draws))}
    # the trivial baselines, fitted on the probe's training responses, scored on the same judged answers
    span = detector.meta.get("span", "response")
    test_signals = baselines.Signals(baselines.answer_lengths(records, span),
                                     baselines.mean_logprobs(lm, records, span, batch_size),
                                     tuple(k["relation"] for k in kept))
    train_split = splits_of(collected, False)["train"]
    train_signals = _training_signals(lm, collected, train_split.ids, train_split.relation, span, batch_size,
                                      Path(locate_dir) / ANSWER_SIGNALS, detector.meta["model"].get("weights_fingerprint"))
    result["baselines"], result["length_matched"] = baselines.baseline_block(
        train_signals, train_split.y, test_signals, y, classifiers, random_scores, bootstrap, seed)
    return result


def _training_signals(lm: LoadedModel, records: Sequence[dict], ids: Sequence[str], families: Sequence[str],
                      span: str, batch_size: int, signals_file: Path, fingerprint: str | None) -> baselines.Signals:
    """The baselines' inputs for the probe's training responses: token counts from the records, log-probabilities
    from locate's ``answer_signals.json`` when it has them all (else one forward pass over the records)."""
    by_id = {str(r["id"]): r for r in records}
    rows = [by_id[i] for i in ids]
    stored = baselines.read_signals(signals_file, fingerprint, span)
    if all(i in stored for i in ids):
        logprobs = np.array([stored[i] for i in ids], dtype=np.float64)
    else:
        logprobs = baselines.mean_logprobs(lm, rows, span, batch_size)
    return baselines.Signals(baselines.answer_lengths(rows, span), logprobs, tuple(families))


def format_heldout(report: dict) -> str:
    p = report["probe"]
    lines = [f"held-out answers: {report['n']} judged ({report['n_hallucinated']} wrong) of "
             f"{report['n_questions']} new questions ({report['n_dropped_uncertain']} hedged/truncated dropped)",
             f"  probe              AUROC {p['auroc']:.3f} [{p['auroc_ci95'][0]:.3f}, {p['auroc_ci95'][1]:.3f}]"]
    if "h_neurons_only" in report:
        h = report["h_neurons_only"]
        lines.append(f"  H-Neurons only     AUROC {h['auroc']:.3f} [{h['auroc_ci95'][0]:.3f}, {h['auroc_ci95'][1]:.3f}]")
        r = report["random"]
        lines.append(f"  random neurons     AUROC {r['auroc_mean']:.3f} +- {r['auroc_std']:.3f} "
                     f"(min {r['auroc_min']:.3f}, max {r['auroc_max']:.3f}, {r['draws']} draws)")
    lines += baselines.format_lines(report.get("baselines"), report.get("length_matched"))
    return "\n".join(lines)
