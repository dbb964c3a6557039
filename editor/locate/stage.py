"""Locate: CETT features, the sparse probe, the H-Neuron set and an honest detection report.

docs/METHOD.md sections 2-5. Inputs: a collect folder (``responses.jsonl``) and the same model. Steps:

1. CETT features of every selected (class-balanced) response: x_answer and x_other (editor.locate.features).
2. Training rows from the **train** split. "3v1" labels (the paper's default): y = 1 for x_answer of
   hallucinated responses, y = 0 for x_answer of faithful responses and x_other of both; "1v1": x_answer
   rows only. Features are standardised with mean/std of the training rows (stored with the probe).
3. An L1 logistic-regression path over a grid of C (editor.locate.probe), warm-started.
   The "answer tokens" are the whole response (minus template and end-of-turn tokens) by default.
   collect also records the span narrowed to the gold alias, but it exists only for correct answers:
   narrowing one class and not the other would let the probe learn the span definition instead of the
   model's state, and a detector cannot narrow without a gold answer. ``span="answer"`` uses it anyway.
4. C is chosen on the **validation** split only: by default the sparsest C whose validation AUROC is
   within ``tol`` of the best (``c_choice: within_family``: the AUROC over same-family pairs only). The
   detection threshold (for accuracy) is also chosen on validation.
5. H-Neurons = neurons with positive weight at the chosen C; ``neurons_path.json`` names the sets at about
   2x, 5x and 10x that count along the path (:func:`choose_path_points`).
6. Report on the held-out **test** split, each with a bootstrap 95% CI: the probe; a classifier refit
   on the H-Neurons alone vs the same classifier refit on as many random neurons, the same count in each
   layer as the H-Neurons (several draws: the paper's random baseline, matched per layer); per relation;
   balanced within each relation (so that a probe cannot win by recognising the question family); cross-relation (train on half of the relations, test on the
   others); the fabricated-entity set when it has both classes; and the trivial baselines on the same test
   items (answer length, question family, both, the model's mean token logprob; editor.locate.baselines),
   the probe's and the H-Neuron classifier's margins over each with paired CIs, and the length-matched subset.
7. When the collect folder holds responses of the split **heldout** (whole question families held out of
   training, e.g. ``bundled:diverse``), the same report on them (:func:`split_report`, the same H-Neuron and
   random-neuron refits, thresholds and seeds) under ``heldout``: they are never training rows and never
   choose C or a threshold; the family baseline gives their unseen families the overall training rate.

Outputs (docs/ARTIFACTS.md): ``features/``, ``answer_signals.json``, ``neurons.json``, ``neurons_path.json``,
``probe.safetensors``, ``locate.json`` and PNG plots (H-Neurons per layer, regularisation path, ROC curves).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open

from .. import stats
from ..artifacts import (
    atomic_write_bytes,
    atomic_write_json,
    check_no_outside_links,
    clean_stale_temporaries,
    provenance,
    safetensors_bytes,
    sha256_json,
)
from ..collect.stage import load_responses
from ..data.questions import HELDOUT_SPLIT
from ..errors import InputError, ModelMismatchError
from ..formats import (
    ANSWER_SIGNALS,
    LOCATE_FORMAT,
    LOCATE_REPORT,
    NEURONS,
    NEURONS_FORMAT,
    NEURONS_PATH,
    NEURONS_PATH_FORMAT,
    PREDICTIONS,
    PROBE,
    PROBE_FORMAT,
)
from ..locking import locked
from ..model.loading import LoadedModel
from ..model.neuron_set import matched_random_pairs
from . import baselines
from . import probe as probe_lib
from .features import (
    FeatureSettings,
    FeatureStore,
    extract_features,
    feature_batch_size,
)
from .settings import LocateSettings

SPLITS = ("train", "validation", "test")
HELDOUT = HELDOUT_SPLIT  # question families held out of training: evaluated as test, never trained on or chosen by


# --------------------------------------------------------------------------------------------- data
@dataclass
class Split:
    ids: list[str]
    y: np.ndarray  # 1 = hallucinated
    relation: list[str]


def splits_of(records: Sequence[dict], fabricated: bool, splits: Sequence[str] = SPLITS) -> dict[str, Split]:
    """The selected (class-balanced) responses of each of ``splits``, in file order."""
    out = {}
    for split in splits:
        rows = [r for r in records if r["selected"] and r["split"] == split and bool(r["fabricated"]) == fabricated]
        out[split] = Split([str(r["id"]) for r in rows], np.array([int(r["hallucinated"]) for r in rows]),
                           [r["relation"] for r in rows])
    return out


def _check_classes(splits: dict[str, Split], source: str) -> None:
    for name in SPLITS:
        counts = np.bincount(splits[name].y, minlength=2) if len(splits[name].y) else np.zeros(2, int)
        if counts.min() == 0:
            raise InputError(
                f"{source}: the {name} split has {counts[0]} faithful and {counts[1]} hallucinated selected "
                f"responses; the probe needs both classes in train, validation and test. Collect more questions "
                f"(or questions the model gets wrong as well as right); an answer is selected only when all of "
                f"its samples agree, so a small model sampled at a high temperature has few: fewer samples or "
                f"a lower temperature (collect's --samples, --temperature) give more"
            )


class Standardiser:
    """Mean and std of the training rows; constant features get std 1 (they stay 0 after centring)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, x: torch.Tensor, block: int = 4096) -> "Standardiser":
        """Moments in float64, ``block`` columns at a time (a float64 copy of one block, never of ``x``)."""
        mean, std = torch.empty(x.shape[1], dtype=torch.float64), torch.empty(x.shape[1], dtype=torch.float64)
        for start in range(0, x.shape[1], block):
            part = x[:, start:start + block].double()
            mean[start:start + block] = part.mean(0)
            std[start:start + block] = part.std(0, unbiased=False)
        std[std < 1e-12] = 1.0
        return cls(mean.float(), std.float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def apply_(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x`` in place (the same float32 arithmetic as calling it); returns ``x``."""
        return x.sub_(self.mean).div_(self.std)


def training_rows(store: FeatureStore, split: Split, labels: str,
                  columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and labels of the probe's training matrix (3v1: answer rows + other rows; 1v1: answers), read
    straight into one float32 matrix; ``columns``: only those features."""
    y = torch.tensor(split.y, dtype=torch.float32)
    n, width = len(split.ids), store.n_features if columns is None else len(columns)
    if labels == "1v1":
        return store.load(split.ids, "answer", columns=columns), y
    x = torch.empty(2 * n, width, dtype=torch.float32)
    store.load(split.ids, "answer", columns=columns, out=x[:n])
    store.load(split.ids, "other", columns=columns, out=x[n:])
    return x, torch.cat([y, torch.zeros_like(y)])


# ------------------------------------------------------------------------------------------- fitting
@dataclass
class FittedProbe:
    weight: torch.Tensor  # [F] in standardised space
    bias: float
    standardiser: Standardiser
    C: float
    columns: torch.Tensor | None = None  # feature subset (restricted classifiers); None = all

    def scores(self, x_raw: torch.Tensor) -> np.ndarray:
        """Logits for raw (unstandardised) feature rows; x_raw holds only ``columns`` when set."""
        mean, std = self.standardiser.mean, self.standardiser.std
        if self.columns is not None:
            mean, std = mean[self.columns], std[self.columns]
        return (((x_raw - mean) / std) @ self.weight + self.bias).numpy()


@dataclass
class PathFit:
    """The fitted regularisation path, its validation AUROCs and the chosen point."""

    path: list  # probe_lib.PathPoint, increasing C
    val_auroc: list[float]  # pooled over the validation responses
    val_auroc_within: list[float | None]  # within family (baselines.within_family_auroc); None: no family has both
    chosen: int
    standardiser: Standardiser
    criterion: str  # what C was chosen by: "pooled" or "within_family"
    note: str | None = None  # why the criterion differs from settings.c_choice


def fit_probe_path(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: np.ndarray,
                   settings: LocateSettings, progress: bool = False, *, in_place: bool = False,
                   val_families: Sequence[str] | None = None) -> PathFit:
    """Standardise, fit the path, score every point on validation, choose C by the rule on the validation AUROC
    that ``settings.c_choice`` names (``within_family`` needs ``val_families``). ``in_place``: standardise
    ``x_train`` itself (no second copy of the training matrix; the caller's raw rows are gone)."""
    std = Standardiser.fit(x_train)
    xs = std.apply_(x_train) if in_place else std(x_train)
    grid = settings.C or probe_lib.default_C_grid(xs, y_train, n=settings.n_C)
    path = probe_lib.fit_path(xs, y_train, sorted(grid), progress=progress)
    xv = std.apply_(x_val.clone())  # = std(x_val), with one temporary copy instead of two
    val_scores = [(xv @ p.weight + p.bias).numpy() if p.n_nonzero else None for p in path]
    val_auroc = [stats.auroc(s, y_val) if s is not None else 0.5 for s in val_scores]
    within: list[float | None] = [None] * len(path)
    # whether any family holds both classes (the scores do not matter for that)
    if val_families is not None and baselines.within_family_auroc(np.zeros(len(y_val)), y_val, val_families) is not None:
        within = [baselines.within_family_auroc(s, y_val, val_families) if s is not None else 0.5
                  for s in val_scores]
    criterion, note, by = "pooled", None, val_auroc
    if settings.c_choice == "within_family":
        if within[0] is None:
            note = ("c_choice within_family: no validation family holds both a wrong and a right answer, so C was "
                    "chosen on the pooled validation AUROC")
        else:
            criterion, by = "within_family", [float(w) for w in within]
    chosen = probe_lib.select_C(path, by, rule=settings.rule, tol=settings.tol)
    return PathFit(path, val_auroc, within, chosen, std, criterion, note)


def refit_on(columns: torch.Tensor, x_train: torch.Tensor, y_train: torch.Tensor, C: float) -> FittedProbe:
    """The same L1 logistic regression, refit on a subset of neurons (H-Neurons or random ones)."""
    return refit_columns(columns, x_train[:, columns], y_train, C, x_train.shape[1])


def refit_columns(columns: torch.Tensor, sub: torch.Tensor, y_train: torch.Tensor, C: float,
                  n_features: int) -> FittedProbe:
    """:func:`refit_on` given only the training rows' raw ``columns`` (``sub``) of the ``n_features``."""
    std = Standardiser.fit(sub)
    point = probe_lib.fit_l1_logreg(std(sub), y_train, C)
    full_std = Standardiser(torch.zeros(n_features), torch.ones(n_features))
    full_std.mean[columns], full_std.std[columns] = std.mean, std.std
    return FittedProbe(point.weight, point.bias, full_std, C, columns=columns)


# ------------------------------------------------------------------------------------------ metrics
def detection_metrics(scores: np.ndarray, y: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict:
    pred = (scores > threshold).astype(int)
    auroc = stats.auroc(scores, y)
    acc = stats.accuracy(pred, y)
    return {
        "n": len(y), "n_hallucinated": int(y.sum()),
        "auroc": auroc,
        "auroc_ci95": list(stats.bootstrap_ci(stats.auroc, scores, y, n_boot=n_boot, seed=seed, stratify=y)),
        "accuracy": acc, "accuracy_ci95": list(stats.bootstrap_ci(stats.accuracy, pred, y, n_boot=n_boot, seed=seed)),
    }


def balanced_within_relation(split: Split, seed: int) -> np.ndarray:
    """Row indices with equal hallucinated / faithful counts inside every relation (family)."""
    rng = random.Random(seed)
    keep: list[int] = []
    for rel in sorted(set(split.relation)):
        rows = [i for i, r in enumerate(split.relation) if r == rel]
        pos = [i for i in rows if split.y[i] == 1]
        neg = [i for i in rows if split.y[i] == 0]
        n = min(len(pos), len(neg))
        keep += rng.sample(pos, n) + rng.sample(neg, n)
    return np.array(sorted(keep), dtype=int)


# ------------------------------------------------------------------------------------------- outputs
def write_probe(path: Path, fitted: FittedProbe, settings: LocateSettings, identity: dict) -> None:
    atomic_write_bytes(path, safetensors_bytes(
        {"weight": fitted.weight.float().contiguous(), "bias": torch.tensor([fitted.bias], dtype=torch.float32),
         "mean": fitted.standardiser.mean.contiguous(), "std": fitted.standardiser.std.contiguous()},
        metadata={"format": PROBE_FORMAT, "C": repr(fitted.C), "labels": settings.labels,
                  "aggregate": settings.aggregate, "span": settings.span, "store_dtype": "float16",
                  "model": json.dumps(identity, sort_keys=True)},
    ))


def load_probe(path: str | Path) -> tuple[FittedProbe, dict]:
    """Read ``probe.safetensors``: the fitted probe and its metadata (labels, aggregate, model identity)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"probe file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in ("weight", "bias", "mean", "std")}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{path} is not a readable probe file: {exc}") from None
    if meta.get("format") != PROBE_FORMAT:
        raise InputError(f"{path} is not an hneurons probe (format {meta.get('format')!r})")
    fitted = FittedProbe(tensors["weight"], float(tensors["bias"][0]), Standardiser(tensors["mean"], tensors["std"]),
                         float(meta["C"]))
    meta = dict(meta, model=json.loads(meta["model"]))
    return fitted, meta


def neurons_document(weight: torch.Tensor, identity: dict, store: FeatureStore, train: Split,
                     settings: LocateSettings, C: float) -> dict:
    d_ff, layers = identity["d_ff"], identity["num_layers"]
    flat = torch.nonzero(weight > 0).flatten()
    flat = flat[torch.argsort(weight[flat], descending=True)]
    answers = store.load(train.ids, "answer", columns=flat) if len(flat) else torch.zeros(len(train.ids), 0)
    hallu = torch.tensor(train.y, dtype=torch.bool)
    neurons = []
    for k, f in enumerate(flat.tolist()):
        neurons.append({
            "layer": f // d_ff, "index": f % d_ff, "flat_index": f, "weight": float(weight[f]),
            "mean_hallucinated": float(answers[hallu, k].mean()) if hallu.any() else None,
            "mean_faithful": float(answers[~hallu, k].mean()) if (~hallu).any() else None,
        })
    per_layer = {str(layer): 0 for layer in range(layers)}
    for n in neurons:
        per_layer[str(n["layer"])] += 1
    total = layers * d_ff
    return {"format": NEURONS_FORMAT, "model": identity, "neurons": neurons, "count": len(neurons),
            "total_ffn_neurons": total, "per_mille": 1000 * len(neurons) / total, "per_layer": per_layer,
            "probe": {"C": C, "labels": settings.labels, "aggregate": settings.aggregate, "span": settings.span}}


PATH_MULTIPLES = (2, 5, 10)  # the named sets of neurons_path.json: about 2x, 5x and 10x the chosen count
PATH_PER_MILLE_CAP = 1.0  # ... each under 1 per mille of all FFN neurons where the path allows


def choose_path_points(counts: Sequence[int], chosen: int, total: int, multiples: Sequence[int] = PATH_MULTIPLES,
                       cap_per_mille: float = PATH_PER_MILLE_CAP) -> list[dict]:
    """For each multiple m: the path point whose positive-weight count is nearest to m x the chosen point's count,
    among the points with more neurons than the chosen one and under ``cap_per_mille`` of the ``total`` FFN
    neurons (all points with more neurons when none is under the cap); ties go to the smaller set. Returns one
    entry per multiple: ``name`` (``x<m>``), ``multiple``, ``target``, ``index`` (None: no such point),
    ``reached`` (the candidates reach the target), ``within_cap``, ``same_as`` (an earlier name picking the same
    point) and ``note`` (what fell short, in words)."""
    base = int(counts[chosen])
    cap = cap_per_mille * total / 1000
    larger = [i for i, c in enumerate(counts) if c > base]
    under = [i for i in larger if counts[i] < cap]
    pool = under or larger
    out: list[dict] = []
    for m in multiples:
        entry: dict[str, Any] = {"name": f"x{m}", "multiple": m, "target": m * base, "index": None, "reached": False,
                                 "within_cap": False, "same_as": None, "note": None}
        out.append(entry)
        if base == 0:
            entry["note"] = "the chosen C selects no H-Neuron: no multiple of its count"
            continue
        if not pool:
            entry["note"] = f"no point of the path has more than the chosen {base} positive weights"
            continue
        index = min(pool, key=lambda i: (abs(counts[i] - m * base), counts[i], i))
        entry.update(index=index, reached=max(counts[i] for i in pool) >= m * base, within_cap=bool(under))
        notes = []
        if not under:
            notes.append(f"no point of the path with more than {base} neurons stays under {cap_per_mille:g} per mille "
                         f"({cap:.4g} of {total} FFN neurons): the nearest point is taken regardless")
        if not entry["reached"]:
            notes.append(f"the path {'under the cap ' if under else ''}reaches at most {max(counts[i] for i in pool)} "
                         f"positive weights, short of {m} x {base} = {m * base}")
        earlier = [e["name"] for e in out[:-1] if e["index"] == index]
        if earlier:
            entry["same_as"] = earlier[0]
            notes.append(f"the same point as {earlier[0]}")
        entry["note"] = "; ".join(notes) or None
    return out


def neurons_path_document(path: Sequence, chosen: int, identity: dict, store: FeatureStore, train: Split,
                          settings: LocateSettings) -> dict:
    """``neurons_path.json``: the neuron sets along the regularisation path at about 2x, 5x and 10x the chosen
    count (:func:`choose_path_points`), each in the neurons.json schema plus its place on the path."""
    total = identity["num_layers"] * identity["d_ff"]
    picks = choose_path_points([p.n_positive for p in path], chosen, total)
    sets, missing = {}, {}
    for pick in picks:
        if pick["index"] is None:
            missing[pick["name"]] = pick["note"]
            continue
        point = path[pick["index"]]
        doc = neurons_document(point.weight, identity, store, train, settings, point.C)
        doc["path_set"] = {"name": pick["name"], "multiple": pick["multiple"], "target_count": pick["target"],
                       "index": pick["index"], "C": point.C, "reached": pick["reached"],
                       "within_cap": pick["within_cap"], "same_as": pick["same_as"], "note": pick["note"]}
        sets[pick["name"]] = doc
    return {"format": NEURONS_PATH_FORMAT, "model": identity,
            "chosen": {"index": chosen, "C": path[chosen].C, "count": int(path[chosen].n_positive)},
            "total_ffn_neurons": total, "per_mille_cap": PATH_PER_MILLE_CAP, "multiples": list(PATH_MULTIPLES),
            "names": list(sets), "sets": sets, "missing": missing}


def path_summary(doc: dict) -> dict:
    """The ``neuron_path_sets`` block of locate.json: each named set's C, count and notes (no neuron lists)."""
    return {"file": NEURONS_PATH, "sets": {name: {"C": s["probe"]["C"], "count": s["count"], "per_mille": s["per_mille"],
                                                  **{k: s["path_set"][k] for k in ("multiple", "target_count", "reached",
                                                                               "within_cap", "same_as", "note")}}
                                           for name, s in doc["sets"].items()},
            "missing": doc["missing"]}


# ------------------------------------------------------------------------------------------- the stage
@dataclass
class LocateResult:
    out_dir: Path
    neurons: dict
    report: dict

    @property
    def neurons_path(self) -> Path:
        return self.out_dir / NEURONS

    @property
    def probe_path(self) -> Path:
        return self.out_dir / PROBE


def check_same_model(recorded: dict, lm: LoadedModel, what: str, force: bool = False) -> dict | None:
    """An artifact made with another model is an error (architecture always; weights unless forced). Returns what
    ``force`` accepted (both identities, for the output's manifest), else None."""
    spec = (recorded.get("source") or {}).get("spec", "?")
    if recorded.get("architecture_hash") and recorded["architecture_hash"] != lm.architecture_hash:
        raise ModelMismatchError(
            f"{what} was made with {spec!r}, a model of another architecture ({recorded.get('model_type')}, "
            f"{recorded.get('num_layers')} layers x {recorded.get('d_ff')}) than {lm.source.spec!r} "
            f"({lm.arch.model_type}, {lm.num_layers} x {lm.d_ff})")
    if not recorded.get("weights_fingerprint") or recorded["weights_fingerprint"] == lm.fingerprint:
        return None
    if not force:
        raise ModelMismatchError(
            f"{what} was made with other weights ({spec!r}, fingerprint {recorded['weights_fingerprint']}) than "
            f"{lm.source.spec!r} (fingerprint {lm.fingerprint}); pass --force to use it anyway")
    return {"artifact": what, "recorded": {"spec": spec, "weights_fingerprint": recorded["weights_fingerprint"]},
            "model": {"spec": lm.source.spec, "weights_fingerprint": lm.fingerprint}}


@locked("out_dir")
def locate(lm: LoadedModel, responses_dir: str | Path, out_dir: str | Path,
           settings: LocateSettings | None = None, *, progress: bool = True, force: bool = False,
           **fields: Any) -> LocateResult:
    """Run (or resume) the locate stage; see the module docstring. ``settings``
    (:class:`~editor.locate.settings.LocateSettings`) may also be given field by field as keywords."""
    settings = LocateSettings.of(settings, **fields)
    started = time.time()
    records, manifest = load_responses(responses_dir)
    accepted = check_same_model(manifest["model"], lm, f"collect output {responses_dir}", force)
    facts, fabricated = splits_of(records, False), splits_of(records, True)
    _check_classes(facts, f"collect output {responses_dir}")
    # the held-out families (collect's split heldout): scored like test, never trained on, never choosing C
    asked_heldout = any(r["split"] == HELDOUT and not r["fabricated"] for r in records)
    heldout = splits_of(records, False, (HELDOUT,))[HELDOUT]
    out = Path(out_dir)
    check_no_outside_links(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out)  # half-written files of a killed run; this run rewrites them all

    chosen_records = [r for r in records if r["selected"]]  # every split's, heldout included
    store = extract_features(lm, chosen_records, out / "features",
                             FeatureSettings(aggregate=settings.aggregate, span=settings.span,
                                             batch_size=settings.batch_size),
                             progress=progress)

    # the trivial baselines' inputs: token counts and the model's mean token logprob (one forward pass, cached)
    by_id = {str(r["id"]): r for r in chosen_records}
    scored = {"train": facts["train"], "test": facts["test"], **({HELDOUT: heldout} if heldout.ids else {})}
    signal_records = [by_id[i] for split in scored.values() for i in split.ids]
    found = baselines.cached_signals(lm, signal_records, settings.span,
                                     feature_batch_size(lm, signal_records, settings.batch_size), out / ANSWER_SIGNALS)
    signals = {name: baselines.signals_of(split.ids, split.relation, found) for name, split in scored.items()}

    x_train, y_train = training_rows(store, facts["train"], settings.labels)
    x_val = store.load(facts["validation"].ids, "answer")
    x_test = store.load(facts["test"].ids, "answer")
    # standardised in place: one copy of the training matrix in memory (the refits read their columns again)
    fit = fit_probe_path(x_train, y_train, x_val, facts["validation"].y, settings, progress, in_place=True,
                         val_families=facts["validation"].relation)
    path, val_auroc, chosen, std = fit.path, fit.val_auroc, fit.chosen, fit.standardiser
    del x_train
    point = path[chosen]
    probe = FittedProbe(point.weight, point.bias, std, point.C)
    val_scores = probe.scores(x_val)
    threshold = stats.best_threshold(val_scores, facts["validation"].y)

    identity = lm.identity()
    neurons = neurons_document(point.weight, identity, store, facts["train"], settings, point.C)
    h_cols = torch.tensor([n["flat_index"] for n in neurons["neurons"]], dtype=torch.long)

    report = {
        "format": LOCATE_FORMAT,
        "model": identity,
        "responses": {"folder": str(responses_dir), "questions_sha256": manifest.get("questions_sha256"),
                      "collect_settings_sha256": sha256_json({k: manifest.get(k) for k in ("data", "sampling",
                                                                                           "prompt")})},
        "settings": settings.model_dump(),
        "counts": {name: {"n": len(s.ids), "hallucinated": int(s.y.sum())}
                   for name, s in {**facts, **({HELDOUT: heldout} if asked_heldout else {})}.items()},
        "path": [{"C": p.C, "n_nonzero": p.n_nonzero, "n_positive": p.n_positive, "val_auroc": a,
                  "val_auroc_within_family": w, "converged": p.converged}
                 for p, a, w in zip(path, val_auroc, fit.val_auroc_within)],
        "chosen": {"index": chosen, "C": point.C, "rule": settings.rule, "tol": settings.tol,
                   "val_auroc": val_auroc[chosen], "val_auroc_within_family": fit.val_auroc_within[chosen],
                   "c_choice": settings.c_choice, "criterion": fit.criterion, "note": fit.note,
                   "threshold": float(threshold)},
        "h_neurons": {"count": neurons["count"], "per_mille": neurons["per_mille"]},
        "force": {"given": force, "accepted": accepted},
    }
    path_doc = neurons_path_document(path, chosen, identity, store, facts["train"], settings)
    report["neuron_path_sets"] = path_summary(path_doc)
    restricted = restricted_classifiers(h_cols, y_train, x_val, facts, store, settings, probe.C)
    report["test"] = split_report(probe, restricted, x_test, facts["test"], threshold, settings, facts["train"],
                                  signals["train"], signals["test"])
    if asked_heldout:
        report[HELDOUT] = _heldout_report(probe, restricted, heldout, store, threshold, settings, facts["train"],
                                          signals)
    report["cross_relation"] = _cross_relation(store, facts, settings)
    report["fabricated"] = _fabricated_report(probe, store, fabricated, threshold, settings)
    report["wall_time_s"] = round(time.time() - started, 2)
    report["provenance"] = provenance()

    write_probe(out / PROBE, probe, settings, identity)
    _write_predictions(out / PREDICTIONS, probe, store, {**facts, HELDOUT: heldout}, fabricated)
    atomic_write_json(out / NEURONS, neurons)
    atomic_write_json(out / NEURONS_PATH, path_doc)
    from ..plots import plot_locate

    report["plots"] = plot_locate(out, neurons, report)
    atomic_write_json(out / LOCATE_REPORT, report)
    return LocateResult(out, neurons, report)


@dataclass
class Restricted:
    """A classifier refit on a subset of the neurons (the H-Neurons, or a random draw of as many), with its
    validation threshold."""

    name: str  # "h_neurons" or "random_<d>"
    columns: torch.Tensor
    fitted: FittedProbe
    threshold: float


def restricted_classifiers(h_cols: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, facts: dict[str, Split],
                           store: FeatureStore, settings: LocateSettings, C: float) -> list[Restricted]:
    """The H-Neuron classifier and the matched random-neuron draws (the paper's baseline: the same L1 logistic
    regression at the same C, refit on the training rows of those columns; seeds seed + d), thresholds chosen on
    validation. Fitted once and scored on every evaluated split (test, heldout). None when there are no
    H-Neurons."""
    k = len(h_cols)
    if k == 0:
        return []
    column_sets = [("h_neurons", h_cols)] + [
        (f"random_{d}", random_columns(store.n_features, k, h_cols, settings.seed + d, store.meta["d_ff"]))
        for d in range(settings.random_draws)]
    union = torch.unique(torch.cat([cols for _, cols in column_sets]))  # the training rows' raw columns, read once
    raw, _ = training_rows(store, facts["train"], settings.labels, columns=union)
    out = []
    for name, cols in column_sets:
        fitted = refit_columns(cols, raw[:, torch.searchsorted(union, cols)], y_train, C, store.n_features)
        out.append(Restricted(name, cols, fitted,
                              stats.best_threshold(fitted.scores(x_val[:, cols]), facts["validation"].y)))
    return out


def split_report(probe: FittedProbe, restricted: Sequence[Restricted], x_eval: torch.Tensor, evaluated: Split,
                 threshold: float, settings: LocateSettings, train: Split, train_signals: baselines.Signals,
                 eval_signals: baselines.Signals) -> dict:
    """The detection report on one evaluated split (``test``, or ``heldout``: the same blocks): the probe, the
    H-Neuron classifier and the random draws (``restricted``), per relation, balanced within relation, and the
    trivial baselines (fitted on ``train``) with the length-matched subset, every entry with its bootstrap CI."""
    nb, seed = settings.bootstrap, settings.seed
    scores = probe.scores(x_eval)
    result = {"probe": detection_metrics(scores, evaluated.y, threshold, nb, seed)}
    result["probe"]["roc"] = _roc_points(scores, evaluated.y)
    if not restricted:
        result["note"] = "the chosen C selects no neuron with positive weight: no H-Neurons, no baseline"
        result["baselines"], result["length_matched"] = baselines.baseline_block(
            train_signals, train.y, eval_signals, evaluated.y, {"probe": scores}, [], nb, seed)
        return result
    # H-Neurons alone vs the same number of random neurons, same classifier and C (the paper's baseline)
    scored = {}
    for r in restricted:
        s = r.fitted.scores(x_eval[:, r.columns])
        scored[r.name] = (s, detection_metrics(s, evaluated.y, r.threshold, nb, seed))
    result["h_neurons_only"] = scored["h_neurons"][1]
    result["h_neurons_only"]["roc"] = _roc_points(scored["h_neurons"][0], evaluated.y)
    draws = [m for n, (_, m) in scored.items() if n.startswith("random_")]
    result["random"] = _summarise_draws(draws)
    # at the chosen C the L1 refit can keep no random neuron at all: a constant score, AUROC 0.5 by construction
    result["random"]["draws_without_neurons"] = sum(
        int(not bool((r.fitted.weight != 0).any())) for r in restricted if r.name.startswith("random_"))
    result["random"]["roc"] = _roc_points(scored["random_0"][0], evaluated.y)
    random_scores = [s for n, (s, _) in scored.items() if n.startswith("random_")]
    # per relation, and balanced within relation
    result["per_relation"] = {}
    rel = np.array(evaluated.relation)
    for r in sorted(set(evaluated.relation)):
        rows = rel == r
        if len(set(evaluated.y[rows])) < 2:
            result["per_relation"][r] = {"n": int(rows.sum()), "note": "one class only: AUROC undefined"}
            continue
        result["per_relation"][r] = {
            "probe": detection_metrics(scores[rows], evaluated.y[rows], threshold, nb, seed),
            "random_auroc_mean": float(np.mean([stats.auroc(s[rows], evaluated.y[rows]) for s in random_scores])),
        }
    keep = balanced_within_relation(evaluated, seed)
    if len(keep) and len(set(evaluated.y[keep])) == 2:
        rand = [stats.auroc(s[keep], evaluated.y[keep]) for s in random_scores]
        per_class = int(evaluated.y[keep].sum())
        kept_rel = [evaluated.relation[i] for i in keep]
        result["balanced_within_relation"] = {
            "n_per_class": {"hallucinated": per_class, "faithful": len(keep) - per_class},
            "per_relation_per_class": {r: kept_rel.count(r) // 2 for r in sorted(set(kept_rel))},
            "probe": detection_metrics(scores[keep], evaluated.y[keep], threshold, nb, seed),
            "h_neurons_only": detection_metrics(scored["h_neurons"][0][keep], evaluated.y[keep], threshold, nb, seed),
            "random_auroc_mean": float(np.mean(rand)), "random_auroc_min": float(np.min(rand)),
            "random_auroc_max": float(np.max(rand)),
        }
        b = result["balanced_within_relation"]
        b["probe_beats_random"] = bool(b["probe"]["auroc_ci95"][0] > b["random_auroc_mean"])
        if per_class < baselines.MIN_PER_CLASS:
            b["note"] = f"only {per_class} per class (fewer than {baselines.MIN_PER_CLASS}): too few to decide"
    # the trivial baselines on the same items, and the length-matched subset
    result["baselines"], result["length_matched"] = baselines.baseline_block(
        train_signals, train.y, eval_signals, evaluated.y,
        {"probe": scores, "h_neurons_only": scored["h_neurons"][0]}, random_scores, nb, seed)
    return result


def _heldout_report(probe: FittedProbe, restricted: Sequence[Restricted], heldout: Split, store: FeatureStore,
                    threshold: float, settings: LocateSettings, train: Split,
                    signals: dict[str, baselines.Signals]) -> dict:
    """The ``heldout`` block: :func:`split_report` on the held-out families' responses, with what the family
    baseline can know of them; a note instead when they lack a class."""
    n, wrong = len(heldout.ids), int(heldout.y.sum()) if len(heldout.y) else 0
    families = sorted(set(heldout.relation))
    unseen = [f for f in families if f not in set(train.relation)]
    if n == 0 or len(set(heldout.y.tolist())) < 2:
        return {"n": n, "n_hallucinated": wrong, "families": families,
                "note": f"the held-out split has {n - wrong} faithful and {wrong} hallucinated selected responses: "
                        f"AUROC needs both; collect more held-out questions"}
    result = split_report(probe, restricted, store.load(heldout.ids, "answer"), heldout, threshold, settings, train,
                          signals["train"], signals[HELDOUT])
    result["families"], result["unseen_families"] = families, unseen
    n_unseen = sum(f in set(unseen) for f in heldout.relation)
    if n_unseen:
        result["baselines"]["note"] = (
            f"{n_unseen} of the {n} held-out items are of families never seen in training "
            f"({', '.join(unseen)}): the family baseline gives them the overall training rate of hallucination "
            + ("(one constant score for every item: AUROC 0.5), and length + family reduces to a function of length "
               "alone (its length weights are fitted beside the family column, so it can rank unlike length only)"
               if n_unseen == n else "(a constant score for those items)"))
    return result


def _split_lines(block: dict, row, items: str = "test") -> list[str]:
    """The printed rows of one evaluated split's block (:func:`split_report`)."""
    lines = [row("probe (all weights)", block.get("probe")), row("classifier on H-Neurons only",
                                                                  block.get("h_neurons_only"))]
    if "random" in block:
        r = block["random"]
        lines.append(f"  {'random neurons, same count':<34} AUROC {r['auroc_mean']:.3f} +- {r['auroc_std']:.3f} "
                     f"(min {r['auroc_min']:.3f}, max {r['auroc_max']:.3f}, {r['draws']} draws)   "
                     f"accuracy {r['accuracy_mean']:.3f}")
        if r.get("draws_without_neurons"):
            lines.append(f"    note: {r['draws_without_neurons']} of the {r['draws']} random refits kept no neuron at "
                         f"this C (every weight 0: a constant score, AUROC 0.5 by construction); the random "
                         f"neurons carry too little signal for the L1 penalty to keep them")
    b = block.get("balanced_within_relation")
    if b:
        lines.append(row("probe, balanced within relation", b["probe"]))
        per_class = b.get("n_per_class")
        lines.append(f"  {'random, balanced within relation':<34} AUROC {b['random_auroc_mean']:.3f}   "
                     f"probe beats random: {'yes' if b['probe_beats_random'] else 'NO'}"
                     + (f"   ({per_class['hallucinated']} per class)" if per_class else "")
                     + (f"   {b['note']}" if b.get("note") else ""))
    found = baselines.format_lines(block.get("baselines"), None)
    if items != "test" and found:  # the baselines' header names the items it was given
        found[0] = found[0].replace(" test items", f" {items} items")
    lines += found
    if (block.get("baselines") or {}).get("note"):
        lines.append(f"    note: {block['baselines']['note']}")
    return lines + baselines.format_lines(None, block.get("length_matched"))


def _write_predictions(path: Path, probe: FittedProbe, store: FeatureStore, facts: dict[str, Split],
                       fabricated: dict[str, Split]) -> None:
    """The probe's hallucination probability for every held-out response (validation, test, heldout, fabricated)."""
    from ..artifacts import atomic_write_text

    lines = []
    for kind, splits in (("facts", facts), ("fabricated", fabricated)):
        for name, split in splits.items():
            if (kind == "facts" and name == "train") or not split.ids:
                continue
            probs = 1 / (1 + np.exp(-probe.scores(store.load(split.ids, "answer"))))
            for rid, y, rel, p in zip(split.ids, split.y, split.relation, probs):
                lines.append(json.dumps({"id": rid, "set": kind, "split": name, "relation": rel,
                                         "hallucinated": int(y), "hallucination_prob": float(p)}))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def random_columns(n_features: int, k: int, exclude: torch.Tensor, seed: int, d_ff: int | None = None) -> torch.Tensor:
    """The random-neuron baseline's feature columns (flat index = layer * d_ff + j). With ``d_ff`` (the default
    everywhere in hneurons) the draw is matched per layer to ``exclude`` (the H-Neurons' columns; k must be their
    count): exactly as many columns in each layer, none of them H-Neurons
    (:func:`editor.model.neuron_set.matched_random_pairs`). Without it: k columns uniform over all features."""
    if d_ff is not None:
        if k != len(exclude):
            raise ValueError(f"a matched draw takes as many columns as the set ({len(exclude)}), not {k}")
        pairs = matched_random_pairs([(c // d_ff, c % d_ff) for c in exclude.tolist()], d_ff, seed)
        return torch.tensor(sorted(layer * d_ff + j for layer, j in pairs), dtype=torch.long)
    rng = np.random.default_rng(seed)
    excluded = set(exclude.tolist())
    picked: list[int] = []
    while len(picked) < k:
        for c in rng.choice(n_features, size=k, replace=False).tolist():
            if c not in excluded and c not in picked and len(picked) < k:
                picked.append(c)
    return torch.tensor(sorted(picked), dtype=torch.long)


def _summarise_draws(draws: list[dict]) -> dict:
    auc = np.array([d["auroc"] for d in draws])
    acc = np.array([d["accuracy"] for d in draws])
    return {"draws": len(draws), "auroc_mean": float(auc.mean()), "auroc_std": float(auc.std()),
            "auroc_min": float(auc.min()), "auroc_max": float(auc.max()), "accuracy_mean": float(acc.mean()),
            "accuracy_std": float(acc.std()), "per_draw": [{"auroc": d["auroc"], "accuracy": d["accuracy"],
                                                            "auroc_ci95": d["auroc_ci95"]} for d in draws]}


def _roc_points(scores: np.ndarray, y: np.ndarray, n: int = 101) -> dict:
    order = np.argsort(-scores, kind="stable")
    ys = y[order]
    tpr = np.concatenate([[0], np.cumsum(ys) / max(1, ys.sum())])
    fpr = np.concatenate([[0], np.cumsum(1 - ys) / max(1, (1 - ys).sum())])
    idx = np.unique(np.linspace(0, len(tpr) - 1, min(n, len(tpr))).round().astype(int))
    return {"fpr": fpr[idx].round(4).tolist(), "tpr": tpr[idx].round(4).tolist()}


def _cross_relation(store: FeatureStore, facts: dict[str, Split], settings: LocateSettings) -> dict:
    """Train (and choose C) on half of the relations, test on the other half, both ways round."""
    relations = sorted(set(facts["train"].relation) | set(facts["test"].relation))
    if len(relations) < 2:
        return {"note": "only one relation: no cross-relation test"}
    groups = [relations[0::2], relations[1::2]]
    folds = []
    for train_rel, test_rel in (groups, groups[::-1]):
        sub = {n: _subset(s, set(train_rel if n != "test" else test_rel)) for n, s in facts.items()}
        if any(len(set(s.y)) < 2 for s in sub.values()):
            folds.append({"train_relations": train_rel, "test_relations": test_rel,
                          "note": "a split lacks one class for these relations"})
            continue
        x_tr, y_tr = training_rows(store, sub["train"], settings.labels)
        x_val = store.load(sub["validation"].ids, "answer")
        fit = fit_probe_path(x_tr, y_tr, x_val, sub["validation"].y, settings, in_place=True,
                             val_families=sub["validation"].relation)
        p = fit.path[fit.chosen]
        fitted = FittedProbe(p.weight, p.bias, fit.standardiser, p.C)
        thr = stats.best_threshold(fitted.scores(x_val), sub["validation"].y)
        x_te = store.load(sub["test"].ids, "answer")
        folds.append({"train_relations": train_rel, "test_relations": test_rel, "C": p.C,
                      "n_positive": p.n_positive,
                      **detection_metrics(fitted.scores(x_te), sub["test"].y, thr, settings.bootstrap, settings.seed)})
    return {"folds": folds}


def _subset(split: Split, relations: set[str]) -> Split:
    rows = [i for i, r in enumerate(split.relation) if r in relations]
    return Split([split.ids[i] for i in rows], split.y[rows], [split.relation[i] for i in rows])


def _fabricated_report(probe: FittedProbe, store: FeatureStore, fabricated: dict[str, Split], threshold: float,
                       settings: LocateSettings) -> dict:
    """NonExist: hallucinated = a confident answer about a fabricated entity; faithful = a refusal."""
    ids = [i for s in fabricated.values() for i in s.ids]
    y = np.concatenate([s.y for s in fabricated.values()]) if ids else np.array([], dtype=int)
    if len(ids) == 0 or len(set(y.tolist())) < 2:
        return {"n": len(ids), "n_hallucinated": int(y.sum()) if len(y) else 0,
                "note": "the fabricated-entity set does not have both classes (confident answers and refusals) "
                        "among consistent responses: no detection score"}
    scores = probe.scores(store.load(ids, "answer"))
    return {"probe": detection_metrics(scores, y, threshold, settings.bootstrap, settings.seed)}


def format_report(report: dict) -> str:
    """The printed table of the detection report."""
    def row(name: str, m: dict | None) -> str:
        if not m:
            return f"  {name:<34} -"
        lo, hi = m["auroc_ci95"]
        alo, ahi = m["accuracy_ci95"]
        return (f"  {name:<34} AUROC {m['auroc']:.3f} [{lo:.3f}, {hi:.3f}]   "
                f"accuracy {m['accuracy']:.3f} [{alo:.3f}, {ahi:.3f}]   n={m['n']}")

    ch = report["chosen"]
    lines = [f"H-Neurons: {report['h_neurons']['count']} ({report['h_neurons']['per_mille']:.3f} per mille of FFN "
             f"neurons) at C={ch['C']:.4g} (validation AUROC {ch['val_auroc']:.3f}"
             + (f", within family {ch['val_auroc_within_family']:.3f}"
                if ch.get("val_auroc_within_family") is not None else "")
             + f", rule {ch['rule']}" + (", chosen within family" if ch.get("criterion") == "within_family" else "")
             + ")",
             "test split:", *_split_lines(report["test"], row)]
    held = report.get(HELDOUT)
    if held is not None:
        families = ", ".join(held.get("families", []))
        lines.append(f"held-out families (split {HELDOUT}; never trained on, C not chosen on them): {families}")
        lines += _split_lines(held, row, "held-out") if "probe" in held else [f"  {held.get('note')}"]
    for fold in report.get("cross_relation", {}).get("folds", []):
        if "auroc" in fold:
            lines.append(row(f"cross-relation -> {'+'.join(fold['test_relations'])[:20]}", fold))
    fab = report.get("fabricated", {})
    lines.append(row("fabricated entities", fab.get("probe")) if "probe" in fab else f"  fabricated: {fab.get('note')}")
    if ch.get("note"):
        lines.append(f"note: {ch['note']}")
    sets = report.get("neuron_path_sets")
    if sets:
        parts = [f"{name} {s['count']} at C={s['C']:.4g}" + ("" if s["reached"] else " (short of the multiple)")
                 for name, s in sets["sets"].items()]
        parts += [f"{name}: none" for name in sets.get("missing", {})]
        lines.append(f"neuron sets along the path ({sets['file']}): " + (", ".join(parts) or "none"))
    return "\n".join(lines)
