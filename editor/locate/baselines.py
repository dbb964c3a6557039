"""Trivial baselines of every detection report: what a detector scores without looking at a single neuron.

docs/METHOD.md section 5. A probe that has learnt "how long is the answer" or "which kind of question is this"
is no hallucination detector, and the neurons it weights are no H-Neurons. So every detection report (locate's
``locate.json`` and ``hneurons detect --evaluate``) fits, on the **training** responses, four classifiers that
see only what any detector could see for free, and scores them on the **same held-out items** as the probe:

* ``length``: the token count of the answer (the probe's span: the whole response by default), as
  [log(1 + n), (log(1 + n) - mean)^2] so that a U-shaped relation (very short and very long answers wrong)
  is learnt too;
* ``family``: the question family alone, scored by its training rate of hallucination (smoothed with one
  pseudo-response at the overall rate; a family absent from training gets the overall rate);
* ``length_family``: both (the family's log-odds and the two length columns);
* ``confidence``: the model's own mean token log-probability of the answer (teacher-forced over
  prompt + answer, the same tokens the features are computed on), [lp, (lp - mean)^2].

Each is an L2-penalised logistic regression (bias unpenalised; Newton's method) on standardised columns.
Every AUROC of a comparison, and every margin (probe AUROC - baseline AUROC), is computed on one set of
stratified bootstrap resamples of the test items (resampled within each class, as ``editor.stats.bootstrap_ci``
does with ``stratify``, and with the same generator: an AUROC's CI here equals its CI elsewhere in the report
for the same seed), so a margin's CI is a paired CI. A classifier "fails to beat" a baseline when the margin's
95% CI includes or lies below 0.

Also here: the length-matched evaluation (within every token count, as many wrong as right answers, drawn at
random; the length distribution is then the same in both classes, so a length-only score has AUROC 0.5 exactly)
and the within-family validation AUROC that ``c_choice: within_family`` chooses C by.

The collect stage records no per-token log-probabilities (its decoder returns token ids only), so the confidence
is computed here with one forward pass per batch (:func:`mean_logprobs`); locate caches it in
``answer_signals.json`` for ``hneurons detect --evaluate``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import stats
from ..artifacts import atomic_write_json, sha256_json
from ..errors import InputError
from ..formats import ANSWER_SIGNALS_FORMAT
from ..model.loading import LoadedModel

BASELINES = ("length", "family", "length_family", "confidence")
LABELS = {"length": "length only", "family": "question family only", "length_family": "length + family",
          "confidence": "confidence only (mean token logprob)"}
DESCRIPTIONS = {
    "length": "logistic regression on the answer's token count (log(1+n) and its centred square)",
    "family": "the question family's training rate of hallucination (smoothed; unseen families: the overall rate)",
    "length_family": "logistic regression on the family's training log-odds and the two length columns",
    "confidence": "logistic regression on the model's mean token log-probability of the answer (and its centred "
                  "square), teacher-forced over prompt + answer",
}
MIN_PER_CLASS = 100  # fewer items per class than this are reported as too few to decide (issue 16)
_CHUNK_ELEMENTS = 1 << 22  # resampled scores materialised at once
_LOGIT_ELEMENTS = 1 << 27  # logits materialised at once by the confidence pass (512 MiB of float32)


# ------------------------------------------------------------------------------------------ signals
@dataclass(frozen=True)
class Signals:
    """What the trivial baselines see of each response, in the order of the split's ids."""

    n_tokens: np.ndarray  # float64 [n]: tokens of the answer span
    mean_logprob: np.ndarray  # float64 [n]: the model's mean log-probability of those tokens
    family: tuple[str, ...]  # the question family (relation)

    def __post_init__(self) -> None:
        if not (len(self.n_tokens) == len(self.mean_logprob) == len(self.family)):
            raise InputError(f"signals of different lengths: {len(self.n_tokens)} token counts, "
                             f"{len(self.mean_logprob)} log-probabilities, {len(self.family)} families")

    def __len__(self) -> int:
        return len(self.family)


def span_bounds(record: Mapping[str, Any], span: str) -> tuple[int, int]:
    """``[start, end)`` of the record's ``span`` (``response`` or ``answer``) inside its ``input_ids``."""
    rep = record.get("representative") or {}
    n = len(rep.get("input_ids") or [])
    start, end = rep.get(f"{span}_start"), rep.get(f"{span}_end")
    if start is None or end is None or not 0 < start < end <= n:
        raise InputError(f"record {record.get('id')!r}: {span} span [{start}, {end}) is not inside its {n} tokens "
                         f"after at least one prompt token")
    return int(start), int(end)


def answer_lengths(records: Sequence[Mapping[str, Any]], span: str) -> np.ndarray:
    """Token count of every record's answer span."""
    return np.array([float(e - s) for s, e in (span_bounds(r, span) for r in records)], dtype=np.float64)


@torch.no_grad()
def mean_logprobs(lm: LoadedModel, records: Sequence[Mapping[str, Any]], span: str, batch_size: int = 8) -> np.ndarray:
    """The model's mean token log-probability of every record's answer span, teacher-forced on its
    ``input_ids`` (right padding; only the logits at the answer's positions are computed)."""
    device = next(lm.model.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    out = np.empty(len(records), dtype=np.float64)
    start = 0
    while start < len(records):
        batch = list(records[start:start + max(1, int(batch_size))])
        bounds = [span_bounds(r, span) for r in batch]
        width = max(len(r["representative"]["input_ids"]) for r in batch)
        keep = width - min(s for s, _ in bounds) + 1  # logits of positions first - 1 .. width - 1
        fits = max(1, _LOGIT_ELEMENTS // (keep * vocab))
        if fits < len(batch):  # fewer rows this pass, so that the logits fit the budget
            batch, bounds = batch[:fits], bounds[:fits]
            width = max(len(r["representative"]["input_ids"]) for r in batch)
            keep = width - min(s for s, _ in bounds) + 1
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, rec in enumerate(batch):
            seq = rec["representative"]["input_ids"]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                          logits_to_keep=keep).logits.float()
        offset = width - keep  # kept position k is sequence position offset + k
        for row, (s, e) in enumerate(bounds):
            rows = logits[row, s - 1 - offset:e - 1 - offset]  # position t - 1 predicts token t
            targets = ids[row, s:e].to(rows.device)
            logp = rows.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(rows, dim=-1)
            out[start + row] = float(logp.mean())
        start += len(batch)
    if not np.isfinite(out).all():
        raise InputError("the model's answer log-probabilities are not finite (an fp16 overflow?); load the model in "
                         "bfloat16 or float32")
    return out


def signals_key(lm: LoadedModel, records: Sequence[Mapping[str, Any]], span: str) -> dict:
    return {"weights_fingerprint": lm.fingerprint, "architecture_hash": lm.architecture_hash, "span": span,
            "records_sha256": sha256_json([[str(r["id"]), r["representative"]] for r in records])}


def cached_signals(lm: LoadedModel, records: Sequence[Mapping[str, Any]], span: str, batch_size: int,
                   path: Path) -> dict[str, tuple[float, float]]:
    """``{id: (n_tokens, mean_logprob)}`` of ``records``; read from ``path`` (``answer_signals.json``) when it was
    written for the same model, span and records, else computed and written there."""
    key = signals_key(lm, records, span)
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        if doc.get("format") == ANSWER_SIGNALS_FORMAT and doc.get("key") == key:
            return {rid: (float(v["n_tokens"]), float(v["mean_logprob"])) for rid, v in doc["records"].items()}
    lengths, logprobs = answer_lengths(records, span), mean_logprobs(lm, records, span, batch_size)
    found = {str(r["id"]): (float(n), float(lp)) for r, n, lp in zip(records, lengths, logprobs)}
    atomic_write_json(path, {"format": ANSWER_SIGNALS_FORMAT, "key": key, "span": span,
                             "records": {rid: {"split": r.get("split"), "n_tokens": int(found[rid][0]),
                                               "mean_logprob": found[rid][1]}
                                         for rid, r in ((str(r["id"]), r) for r in records)}})
    return found


def read_signals(path: Path, fingerprint: str | None, span: str) -> dict[str, float]:
    """``{id: mean_logprob}`` from a locate folder's ``answer_signals.json`` made with that model and span; {} if
    there is none (an older locate folder) or it was made otherwise."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    key = doc.get("key") or {}
    if doc.get("format") != ANSWER_SIGNALS_FORMAT or key.get("span") != span or (
            fingerprint and key.get("weights_fingerprint") != fingerprint):
        return {}
    return {rid: float(v["mean_logprob"]) for rid, v in doc.get("records", {}).items()}


def signals_of(ids: Sequence[str], families: Sequence[str], found: Mapping[str, tuple[float, float]]) -> Signals:
    missing = [i for i in ids if i not in found]
    if missing:
        raise InputError(f"no answer signals for records {missing[:5]}")
    return Signals(np.array([found[i][0] for i in ids], dtype=np.float64),
                   np.array([found[i][1] for i in ids], dtype=np.float64), tuple(families))


# ----------------------------------------------------------------------------------------- fitting
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, max_iter: int = 100) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression ``sum log-loss + l2/2 ||w||^2`` (bias unpenalised) by damped Newton
    steps. ``x`` [n, k] (standardised columns), ``y`` 0/1. Returns (weights, bias)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise InputError(f"fit_logistic needs x [n, k] and y [n]; got {x.shape} and {y.shape}")
    a = np.hstack([x, np.ones((x.shape[0], 1))])
    penalty = np.full(a.shape[1], float(l2))
    penalty[-1] = 0.0

    def objective(beta: np.ndarray) -> float:
        z = a @ beta
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * beta * beta))

    beta = np.zeros(a.shape[1])
    value = objective(beta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(a @ beta)))
        grad = a.T @ (p - y) + penalty * beta
        hess = a.T @ (a * (p * (1 - p))[:, None]) + np.diag(penalty) + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            candidate = beta - t * step
            new = objective(candidate)
            if new <= value:
                break
            t /= 2
        else:
            break
        beta, done = candidate, abs(value - new) <= 1e-12 * max(1.0, abs(value))
        value = new
        if done or np.max(np.abs(t * step)) < 1e-10:
            break
    return beta[:-1], float(beta[-1])


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class Baseline:
    """A fitted trivial baseline: its raw columns' standardisation, weights, and the training family rates."""

    name: str
    weight: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    centre: Mapping[str, float]  # training means the squared columns are centred on
    family_rate: Mapping[str, float] = field(default_factory=dict)  # smoothed training rate per family
    prior: float = 0.5  # overall training rate (families never seen in training)

    def columns(self, signals: Signals) -> np.ndarray:
        return _design(self.name, signals, self.centre, self.family_rate, self.prior)

    def scores(self, signals: Signals) -> np.ndarray:
        return ((self.columns(signals) - self.mean) / self.std) @ self.weight + self.bias

    def describe(self) -> dict:
        out: dict[str, Any] = {"columns": _COLUMNS[self.name], "weight": [round(float(w), 6) for w in self.weight],
                               "bias": round(self.bias, 6)}
        if self.name in ("family", "length_family"):
            out["family_rate"] = {k: round(v, 6) for k, v in sorted(self.family_rate.items())}
            out["overall_rate"] = round(self.prior, 6)
        return out


_COLUMNS = {"length": ["log1p_tokens", "log1p_tokens_centred_sq"], "family": ["family_log_odds"],
            "length_family": ["family_log_odds", "log1p_tokens", "log1p_tokens_centred_sq"],
            "confidence": ["mean_logprob", "mean_logprob_centred_sq"]}


def _design(name: str, signals: Signals, centre: Mapping[str, float], rates: Mapping[str, float],
            prior: float) -> np.ndarray:
    length = np.log1p(signals.n_tokens)
    cols: list[np.ndarray] = []
    if name in ("family", "length_family"):
        cols.append(np.array([_logit(rates.get(f, prior)) for f in signals.family]))
    if name in ("length", "length_family"):
        cols += [length, (length - centre["length"]) ** 2]
    if name == "confidence":
        cols += [signals.mean_logprob, (signals.mean_logprob - centre["confidence"]) ** 2]
    if not cols:
        raise InputError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    return np.stack(cols, axis=1)


def family_rates(families: Sequence[str], y: np.ndarray, pseudo: float = 1.0) -> tuple[dict[str, float], float]:
    """Each family's training rate of hallucination, smoothed towards the overall rate with ``pseudo`` responses."""
    y = np.asarray(y, dtype=np.float64)
    prior = float(y.mean())
    fam = np.array(families, dtype=object)
    rates = {}
    for f in sorted(set(families)):
        rows = fam == f
        rates[f] = float((y[rows].sum() + pseudo * prior) / (rows.sum() + pseudo))
    return rates, prior


def fit_baseline(name: str, train: Signals, y: np.ndarray) -> Baseline:
    """One trivial baseline fitted on the training responses (labels 1 = hallucinated)."""
    y = np.asarray(y)
    if len(y) != len(train) or len(set(y.tolist())) < 2:
        raise InputError(f"a baseline needs training labels of both classes for its {len(train)} responses")
    rates, prior = family_rates(train.family, y)
    centre = {"length": float(np.log1p(train.n_tokens).mean()), "confidence": float(train.mean_logprob.mean())}
    raw = _design(name, train, centre, rates, prior)
    mean, std = raw.mean(0), raw.std(0)
    std[std < 1e-12] = 1.0
    weight, bias = fit_logistic((raw - mean) / std, y)
    return Baseline(name, weight, bias, mean, std, centre, rates, prior)


def fit_baselines(train: Signals, y: np.ndarray) -> dict[str, Baseline]:
    return {name: fit_baseline(name, train, y) for name in BASELINES}


# ------------------------------------------------------------------------------------ comparisons
def stratified_resamples(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] item indices, resampled within each class: the resamples ``editor.stats.bootstrap_ci`` draws
    with ``stratify=y`` and the same seed."""
    y = np.asarray(y).flatten()
    rng = np.random.default_rng(seed)
    parts = []
    for value in np.unique(y):
        members = np.flatnonzero(y == value)
        parts.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    return np.concatenate(parts, axis=1)


def resampled_auroc(scores: np.ndarray, y: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The AUROC of ``scores`` on every resample (row) of ``index``."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y)
    step = max(1, _CHUNK_ELEMENTS // max(1, index.shape[1]))
    return np.concatenate([np.asarray(stats.auroc(scores[rows], y[rows]), dtype=np.float64)
                           for rows in (index[i:i + step] for i in range(0, index.shape[0], step))])


def _ci(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    lo, hi = np.quantile(finite, [0.025, 0.975])
    return [float(lo), float(hi)]


def within_family_auroc(scores: np.ndarray, y: np.ndarray, families: Sequence[str]) -> float | None:
    """The fraction of (hallucinated, faithful) pairs **of the same family** that the scores rank right (ties
    one half): the families' AUROCs weighted by their pair counts. None when no family holds both classes."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y)
    fam = np.array(families, dtype=object)
    num = den = 0.0
    for f in sorted(set(families)):
        rows = fam == f
        pos = int(y[rows].sum())
        neg = int(rows.sum()) - pos
        if pos and neg:
            num += stats.auroc(scores[rows], y[rows]) * pos * neg
            den += pos * neg
    return num / den if den else None


def compare(classifiers: Mapping[str, np.ndarray], baselines: Mapping[str, np.ndarray], y: np.ndarray,
            n_boot: int, seed: int) -> dict:
    """AUROCs of ``classifiers`` (probe, H-Neurons only) and ``baselines`` on the same items, each with a
    bootstrap 95% CI, and every classifier's AUROC margin over every baseline with a paired 95% CI: all from one
    set of resamples (:func:`stratified_resamples`). Keys: ``n``, ``n_hallucinated``, ``resamples``, ``seed``,
    ``baselines`` / ``classifiers`` ({name: {"auroc", "auroc_ci95"}}; baselines add ``label``), ``margins``
    ({classifier: {baseline: {"margin", "ci95", "beats"}}}), ``fails_to_beat`` ({classifier: [baseline, ...]})
    and ``statement`` (the plain sentence the printed report shows)."""
    y = np.asarray(y)
    index = stratified_resamples(y, n_boot, seed)
    reps, points = {}, {}
    for name, s in {**classifiers, **baselines}.items():
        if len(s) != len(y):
            raise InputError(f"{name}: {len(s)} scores for {len(y)} items; every score must be of the same items")
        reps[name], points[name] = resampled_auroc(s, y, index), stats.auroc(s, y)
    out: dict[str, Any] = {"n": len(y), "n_hallucinated": int(y.sum()), "resamples": int(n_boot), "seed": seed,
                           "baselines": {}, "classifiers": {}, "margins": {}, "fails_to_beat": {}}
    for name in baselines:
        out["baselines"][name] = {"label": LABELS.get(name, name), "auroc": points[name],
                                  "auroc_ci95": _ci(reps[name])}
    for clf in classifiers:
        out["classifiers"][clf] = {"auroc": points[clf], "auroc_ci95": _ci(reps[clf])}
        out["margins"][clf] = {}
        for name in baselines:
            lo, hi = _ci(reps[clf] - reps[name])
            out["margins"][clf][name] = {"margin": points[clf] - points[name], "ci95": [lo, hi], "beats": lo > 0}
        out["fails_to_beat"][clf] = [n for n in baselines if not out["margins"][clf][n]["beats"]]
    out["statement"] = statement(out)
    return out


_CLASSIFIER_NAMES = {"probe": "the probe", "h_neurons_only": "the H-Neuron classifier"}


def statement(comparison: Mapping[str, Any]) -> str:
    """Which baselines each classifier fails to beat, in words, with the margins."""
    parts = []
    for clf, failed in comparison["fails_to_beat"].items():
        who = _CLASSIFIER_NAMES.get(clf, clf)
        if not failed:
            parts.append(f"{who} beats every trivial baseline (each margin's 95% CI lies above 0)")
            continue
        items = []
        for name in failed:
            m = comparison["margins"][clf][name]
            items.append(f"{LABELS.get(name, name)} (margin {m['margin']:+.3f} [{m['ci95'][0]:+.3f}, "
                         f"{m['ci95'][1]:+.3f}])")
        parts.append(f"{who} FAILS to beat " + ", ".join(items))
    return "; ".join(parts) + "."


def length_matched_rows(n_tokens: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Item indices with as many hallucinated as faithful answers at every token count (random within each
    count, seeded): pairs of right and wrong answers of equal length."""
    n_tokens, y = np.asarray(n_tokens), np.asarray(y)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for length in np.unique(n_tokens):
        pos = np.flatnonzero((n_tokens == length) & (y == 1))
        neg = np.flatnonzero((n_tokens == length) & (y == 0))
        k = min(len(pos), len(neg))
        if k:
            keep += rng.choice(pos, k, replace=False).tolist() + rng.choice(neg, k, replace=False).tolist()
    return np.array(sorted(keep), dtype=int)


def length_matched(n_tokens: np.ndarray, y: np.ndarray, scorers: Mapping[str, np.ndarray],
                   random_scores: Sequence[np.ndarray], n_boot: int, seed: int) -> dict:
    """AUROC of every scorer on the length-matched subset (:func:`length_matched_rows`), with bootstrap CIs,
    the random-neuron draws' mean, and the subset's size."""
    y = np.asarray(y)
    rows = length_matched_rows(n_tokens, y, seed)
    pairs = len(rows) // 2
    out: dict[str, Any] = {"n": len(rows), "n_pairs": pairs, "n_items": len(y),
                           "lengths": len(np.unique(np.asarray(n_tokens)[rows])) if len(rows) else 0}
    if not pairs:
        out["note"] = "no token count holds both a right and a wrong answer: no length-matched evaluation"
        return out
    yy = y[rows]
    index = stratified_resamples(yy, n_boot, seed)
    out["scores"] = {}
    for name, s in scorers.items():
        s = np.asarray(s)[rows]
        out["scores"][name] = {"auroc": stats.auroc(s, yy), "auroc_ci95": _ci(resampled_auroc(s, yy, index))}
    if len(random_scores):
        rand = [stats.auroc(np.asarray(s)[rows], yy) for s in random_scores]
        out["random_auroc_mean"], out["random_auroc_min"], out["random_auroc_max"] = (
            float(np.mean(rand)), float(np.min(rand)), float(np.max(rand)))
    if pairs < MIN_PER_CLASS:
        out["note"] = f"only {pairs} pairs (fewer than {MIN_PER_CLASS} per class): too few to decide"
    return out


def baseline_block(train: Signals, y_train: np.ndarray, test: Signals, y_test: np.ndarray,
                   classifiers: Mapping[str, np.ndarray], random_scores: Sequence[np.ndarray], n_boot: int,
                   seed: int) -> tuple[dict, dict]:
    """The ``baselines`` and ``length_matched`` blocks of a detection report: baselines fitted on ``train``,
    compared with ``classifiers`` on ``test`` (:func:`compare`), and everything on the length-matched subset."""
    fitted = fit_baselines(train, y_train)
    scores = {name: b.scores(test) for name, b in fitted.items()}
    block = compare(classifiers, scores, y_test, n_boot, seed)
    block["fit"] = {"split": "train", "n": len(train), "n_hallucinated": int(np.asarray(y_train).sum()),
                    "models": {name: {"description": DESCRIPTIONS[name], **b.describe()} for name, b in fitted.items()}}
    block["test_signals"] = {"n_tokens_mean": {"hallucinated": _mean(test.n_tokens, y_test, 1),
                                               "faithful": _mean(test.n_tokens, y_test, 0)},
                             "mean_logprob_mean": {"hallucinated": _mean(test.mean_logprob, y_test, 1),
                                                   "faithful": _mean(test.mean_logprob, y_test, 0)}}
    matched = length_matched(test.n_tokens, y_test, {**classifiers, **scores}, random_scores, n_boot, seed)
    return block, matched


def _mean(values: np.ndarray, y: np.ndarray, cls: int) -> float | None:
    rows = np.asarray(y) == cls
    return float(np.asarray(values)[rows].mean()) if rows.any() else None


# ---------------------------------------------------------------------------------------- printing
def format_lines(block: Mapping[str, Any] | None, matched: Mapping[str, Any] | None) -> list[str]:
    """The printed rows: each baseline's AUROC and the classifiers' margins over it, the verdict, and the
    length-matched AUROCs."""
    lines: list[str] = []
    if block:
        lines.append(f"  trivial baselines (fit on train; the same {block['n']} test items; margin = AUROC minus "
                     f"the baseline's, paired 95% CI):")
        for name, row in block["baselines"].items():
            lo, hi = row["auroc_ci95"]
            text = f"    {row['label']:<36} AUROC {row['auroc']:.3f} [{lo:.3f}, {hi:.3f}]"
            for clf, margins in block["margins"].items():
                m = margins[name]
                who = "probe" if clf == "probe" else "H-only" if clf == "h_neurons_only" else clf
                text += f"   {who} {m['margin']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]"
            lines.append(text)
        lines.append(f"    -> {block['statement']}")
    if matched:
        if "scores" not in matched:
            lines.append(f"  length-matched: {matched.get('note')}")
        else:
            parts = []
            for name in ("probe", "h_neurons_only"):
                if name in matched["scores"]:
                    row = matched["scores"][name]
                    who = "probe" if name == "probe" else "H-only"
                    parts.append(f"{who} AUROC {row['auroc']:.3f} [{row['auroc_ci95'][0]:.3f}, "
                                 f"{row['auroc_ci95'][1]:.3f}]")
            if "random_auroc_mean" in matched:
                parts.append(f"random {matched['random_auroc_mean']:.3f}")
            if "confidence" in matched["scores"]:
                parts.append(f"confidence {matched['scores']['confidence']['auroc']:.3f}")
            line = (f"  length-matched ({matched['n_pairs']} pairs of equal token count, n={matched['n']}): "
                    + ", ".join(parts))
            if matched.get("note"):
                line += f"   ({matched['note']})"
            lines.append(line)
    return lines
