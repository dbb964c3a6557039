"""Abstention: how well an edit says "I don't know" where the base model would have answered wrong.

Read from lm-eval's per-item logs of the bundled ``hneurons_facts`` task (``samples_hneurons_facts.jsonl``:
``accuracy`` = confident and right, ``refusal_rate`` = abstains, ``hallucination_rate`` = confident and wrong;
eval/hneurons/utils.py ``facts_results``) of the base model and of an edited variant, matched item by item
(doc id and question id; the two logs must hold the same items). Per variant (docs/METHOD.md section 8,
"Abstention"):

* accuracy, hallucination rate, abstention rate (Wilson 95% CIs), and the paired change edited - base of each
  (exact McNemar mid-p and its CI, :func:`editor.stats.paired_binary`, with ``mde``);
* **selectivity**: of the items the edited model abstains on, the fraction the base model got wrong (base not
  accurate: wrong, hedged, empty or refused), with a Wilson 95% CI over the abstained items;
* **abstention AUROC**: the AUROC of the edited model's abstention (0/1) against base wrongness (1 = base not
  accurate), with a percentile bootstrap CI over items stratified by base wrongness. For a 0/1 score the AUROC
  (ties count one half) is 0.5 + (abstention rate on base-wrong items - abstention rate on base-right items) / 2,
  so it depends on the abstention rate: it is always reported beside it, with both rates;
* the risk-coverage point: coverage = fraction of items answered (not abstained), risk = fraction of the
  answered items that are hallucinations (confident and wrong);
* ``hneurons_nonexist``'s refusal rate on fabricated entities (base, edited, paired change) when it ran.

The locate probe as an external abstention rule (``detector``): the probe scores the base model's own facts
answers (:class:`editor.locate.detect.Detector`, the question with collect's prompt and the base model's response
as the answer); the rule abstains where the base model abstained and where the probe's hallucination probability
is >= a threshold, swept over every observed probability. Its AUROC against base wrongness (over the items with a
non-empty base answer) is the ceiling the edit's abstention AUROC is read against.

:func:`compare_abstention` puts several eval folders of the same base model and items side by side (``hneurons
abstain-report``), with the H-edit minus random-mean differences when some variants are random controls.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..artifacts import (
    atomic_write_json,
    atomic_write_text,
    provenance,
    read_json,
    sha256_file,
)
from ..errors import InputError
from ..formats import EVAL_RESULTS

FACTS_TASK = "hneurons_facts"
NONEXIST_TASK = "hneurons_nonexist"
ABSTENTION_FORMAT = "hneurons.abstention/1"
ABSTENTION_REPORT_FORMAT = "hneurons.abstention_report/1"
ABSTENTION_PLOT = "abstention_rc.png"
PROBE_SCORES = "abstention_probe.json"
PROBE_SCORES_FORMAT = "hneurons.abstention_probe/1"
AUROC_NOTE = ("the AUROC of a 0/1 abstention is 0.5 + (abstention rate on base-wrong items - abstention rate on "
              "base-right items) / 2: it depends on how often the variant abstains, so read it with the abstention "
              "rate beside it")


# ================================================================================================ items
@dataclass
class FactsItems:
    """One variant's per-item outcomes on a facts-style task, sorted by doc id."""

    doc_ids: list[int]
    ids: list[str]
    questions: list[str]
    responses: list[str]
    accurate: np.ndarray  # bool
    abstain: np.ndarray
    hallucinated: np.ndarray

    @property
    def n(self) -> int:
        return len(self.doc_ids)


def _flag(sample: Mapping[str, Any], metric: str, where: str) -> bool:
    value = sample.get(metric)
    if isinstance(value, bool):
        return value
    if not isinstance(value, (int, float)) or value not in (0, 1):
        raise InputError(f"{where}: item {sample.get('doc_id')} has {metric}={value!r}; expected 0 or 1 (a log of "
                         f"the bundled {FACTS_TASK} task, eval/hneurons/utils.py facts_results)")
    return bool(value)


def _response(sample: Mapping[str, Any]) -> str:
    resp = sample.get("filtered_resps", sample.get("resps"))
    while isinstance(resp, list):
        resp = resp[0] if resp else ""
    return "" if resp is None else str(resp)


def facts_items(samples: Iterable[Mapping[str, Any]], where: str, metrics: Sequence[str] = (
        "accuracy", "refusal_rate", "hallucination_rate")) -> FactsItems:
    """Per-item outcomes from lm-eval sample records (``doc_id``, ``doc``, the metrics; filter ``none``)."""
    rows: dict[int, Mapping[str, Any]] = {}
    for sample in samples:
        if sample.get("filter", "none") != "none":
            continue
        doc_id = int(sample["doc_id"])
        if doc_id in rows:
            raise InputError(f"{where}: doc id {doc_id} is logged twice")
        rows[doc_id] = sample
    if not rows:
        raise InputError(f"{where}: no items logged")
    order = sorted(rows)
    doc = [rows[d].get("doc") or {} for d in order]
    flags = {m: np.array([_flag(rows[d], m, where) if m in rows[d] else False for d in order]) for m in metrics}
    return FactsItems(order, [str(x.get("id", d)) for x, d in zip(doc, order)],
                      [str(x.get("question", "")) for x in doc], [_response(rows[d]) for d in order],
                      flags.get("accuracy", np.zeros(len(order), bool)), flags["refusal_rate"],
                      flags.get("hallucination_rate", np.zeros(len(order), bool)))


def read_items(run_folder: str | Path, task: str = FACTS_TASK) -> FactsItems:
    """A variant's items of ``task`` from its lm-eval folder (``lm_eval/<variant>/samples_<task>.jsonl``)."""
    path = Path(run_folder) / f"samples_{task}.jsonl"
    if not path.is_file():
        raise InputError(f"{path} not found: the variant's lm-eval folder has no per-item log of {task} (run "
                         f"`hneurons eval` with --tasks including {task})")
    with open(path, encoding="utf-8") as handle:
        samples = [json.loads(line) for line in handle if line.strip()]
    metrics = ("accuracy", "refusal_rate", "hallucination_rate") if task == FACTS_TASK else ("refusal_rate",)
    return facts_items(samples, str(path), metrics)


def check_same_items(a: FactsItems, b: FactsItems, what_a: str, what_b: str) -> None:
    """The two logs must hold the same items (doc ids and question ids), else one InputError saying how they differ."""
    if a.doc_ids == b.doc_ids and a.ids == b.ids:
        return
    only_a = sorted(set(zip(a.doc_ids, a.ids)) - set(zip(b.doc_ids, b.ids)))
    only_b = sorted(set(zip(b.doc_ids, b.ids)) - set(zip(a.doc_ids, a.ids)))
    raise InputError(f"{what_a} and {what_b} did not check the same items ({a.n} vs {b.n}; only in the first: "
                     f"{[i for _, i in only_a[:3]]}{'...' if len(only_a) > 3 else ''}, only in the second: "
                     f"{[i for _, i in only_b[:3]]}{'...' if len(only_b) > 3 else ''}); evaluate both on the same "
                     f"task items (same tasks and --limit)")


# ============================================================================================ measures
def wilson(k: int, n: int, z: float = 1.959963984540054) -> list[float] | None:
    """Wilson score 95% interval of a proportion k / n (None for n = 0)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def rate(flags: np.ndarray) -> dict[str, Any]:
    flags = np.asarray(flags, dtype=bool)
    n, k = int(flags.size), int(flags.sum())
    return {"value": k / n if n else None, "k": k, "n": n, "ci95": wilson(k, n), "ci_method": "wilson"}


def selectivity(edit_abstain: np.ndarray, base_wrong: np.ndarray) -> dict[str, Any]:
    """Of the items the edited model abstains on, the fraction the base model got wrong (Wilson 95% CI)."""
    abstained = np.asarray(edit_abstain, dtype=bool)
    out = rate(np.asarray(base_wrong, dtype=bool)[abstained])
    out["note"] = None if out["n"] else "the variant abstains on no item: selectivity undefined"
    return out


def abstention_auroc(abstain: np.ndarray, base_wrong: np.ndarray, n_boot: int = 2000, seed: int = 0
                     ) -> dict[str, Any]:
    """AUROC of the 0/1 abstention against base wrongness, with a stratified percentile bootstrap CI."""
    a = np.asarray(abstain, dtype=np.float64)
    w = np.asarray(base_wrong, dtype=bool)
    out = {"value": None, "ci95": None, "n": int(w.size), "n_base_wrong": int(w.sum()),
           "n_base_right": int((~w).sum()), "ci_method": f"percentile bootstrap over items, stratified by base "
                                                         f"wrongness ({n_boot} resamples, seed {seed})", "note": None}
    if w.all() or not w.any():
        out["note"] = "the base model is right on every item or on none: AUROC undefined"
        return out
    out["value"] = float(stats.auroc(a, w))
    out["ci95"] = list(stats.bootstrap_ci(stats.auroc, a, w, n_boot=n_boot, seed=seed, stratify=w))
    return out


def auroc_terms(abstain: np.ndarray, base_wrong: np.ndarray) -> np.ndarray:
    """Per-item terms whose mean is the 0/1 abstention's AUROC against base wrongness:
    t_i = 0.5 + n / 2 * a_i * (w_i / n_wrong - (1 - w_i) / n_right), so mean(t) = 0.5 + (rate_wrong - rate_right) / 2
    (the Mann-Whitney AUROC with ties at one half). With the same items and base, the terms of several variants
    are paired per item (used for the H-edit minus random-sets difference)."""
    a = np.asarray(abstain, dtype=np.float64)
    w = np.asarray(base_wrong, dtype=bool)
    n_w, n_r = int(w.sum()), int((~w).sum())
    if n_w == 0 or n_r == 0:
        raise InputError("abstention AUROC needs base-wrong and base-right items")
    return 0.5 + a.size / 2 * a * np.where(w, 1.0 / n_w, -1.0 / n_r)


def risk_coverage(abstain: np.ndarray, hallucinated: np.ndarray) -> dict[str, Any]:
    """coverage = answered / n; risk = hallucinations among the answered (None when nothing is answered)."""
    a = np.asarray(abstain, dtype=bool)
    h = np.asarray(hallucinated, dtype=bool)
    answered = int((~a).sum())
    return {"coverage": answered / a.size if a.size else None,
            "risk": float((h & ~a).sum() / answered) if answered else None, "answered": answered, "n": int(a.size)}


def probe_curve(probs: np.ndarray, base_abstain: np.ndarray, base_hallucinated: np.ndarray) -> list[dict[str, Any]]:
    """The probe as an abstention rule on the base model's answers: abstain where the base abstained or where the
    hallucination probability is >= the threshold, for every observed probability (and None: the base model
    itself). Unscored items (NaN: empty answers) are never abstained on by the rule."""
    p = np.asarray(probs, dtype=np.float64)
    base = np.asarray(base_abstain, dtype=bool)
    points = [{"threshold": None, **risk_coverage(base, base_hallucinated)}]
    for t in sorted(set(p[np.isfinite(p)].tolist()), reverse=True):
        points.append({"threshold": float(t), **risk_coverage(base | (np.nan_to_num(p, nan=-1.0) >= t),
                                                              base_hallucinated)})
    return points


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    res = stats.paired_binary(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return {"delta": res["delta"], "ci95": list(res["ci"]), "p_value": res["p_value"], "n": res["n"],
            "discordant": {"better": res["better"], "worse": res["worse"]}, "mde": res["mde"],
            "mde_lower_bound": res["mde_lower_bound"], "test": "mcnemar_mid_p"}


def variant_rates(items: FactsItems) -> dict[str, Any]:
    return {"accuracy": rate(items.accurate), "hallucination_rate": rate(items.hallucinated),
            "abstention_rate": rate(items.abstain), "risk_coverage": risk_coverage(items.abstain, items.hallucinated)}


def abstention_measures(base: FactsItems, edited: FactsItems, *, n_boot: int = 2000, seed: int = 0,
                        what: tuple[str, str] = ("base", "edited")) -> dict[str, Any]:
    """Every measure of one edited variant against the base model on the same facts items (module docstring)."""
    check_same_items(base, edited, *what)
    wrong = ~base.accurate
    return {
        "task": FACTS_TASK, "n": base.n, "n_base_wrong": int(wrong.sum()), "n_base_right": int((~wrong).sum()),
        "base": variant_rates(base), "edited": variant_rates(edited),
        "delta": {"accuracy": paired(base.accurate, edited.accurate),
                  "hallucination_rate": paired(base.hallucinated, edited.hallucinated),
                  "abstention_rate": paired(base.abstain, edited.abstain)},
        "selectivity": selectivity(edited.abstain, wrong),
        "abstention_auroc": abstention_auroc(edited.abstain, wrong, n_boot, seed),
        "abstention_on_base_wrong": rate(edited.abstain[wrong]),
        "abstention_on_base_right": rate(edited.abstain[~wrong]),
        "base_wrong_means": "the base model is not accurate on the item (wrong, hedged, empty or refused)",
        "auroc_note": AUROC_NOTE,
    }


def nonexist_measures(base: FactsItems | None, edited: FactsItems | None) -> dict[str, Any] | None:
    if base is None or edited is None:
        return None
    check_same_items(base, edited, f"base {NONEXIST_TASK}", f"edited {NONEXIST_TASK}")
    return {"task": NONEXIST_TASK, "n": base.n, "base": rate(base.abstain), "edited": rate(edited.abstain),
            "delta": paired(base.abstain, edited.abstain),
            "means": "refusal rate on fabricated entities: refuses or says it does not exist"}


def _maybe_items(run_folder: Path, task: str) -> FactsItems | None:
    return read_items(run_folder, task) if (run_folder / f"samples_{task}.jsonl").is_file() else None


# ================================================================================================ probe
def resolve_probe(path: str | Path) -> Path:
    """A locate folder (its probe.safetensors) or the probe file itself."""
    from ..formats import PROBE

    p = Path(path).expanduser()
    if p.is_dir():
        p = p / PROBE
    if not p.is_file():
        raise InputError(f"detector {path}: no probe found (expected a locate folder holding {PROBE}, or the probe "
                         f"file written by `hneurons locate`)")
    return p.resolve()


def score_base_answers(lm, probe: str | Path, base: FactsItems, force: bool = False) -> np.ndarray:
    """The probe's hallucination probability of each base answer (NaN for an empty answer): the question with
    collect's prompt and the logged response, as ``hneurons detect --question Q --answer A`` scores it."""
    from ..locate.detect import Detector

    detector = Detector(lm, str(resolve_probe(probe)), force=force)
    probs = np.full(base.n, np.nan)
    keep = [i for i in range(base.n) if base.responses[i].strip() and base.questions[i].strip()]
    items = ({"question": base.questions[i], "answer": base.responses[i]} for i in keep)
    for i, scored in zip(keep, detector.score(items)):
        probs[i] = scored["hallucination_prob"]
    return probs


def write_probe_scores(path: Path, probe: str | Path, base: FactsItems, probs: np.ndarray) -> None:
    probe = resolve_probe(probe)
    atomic_write_json(path, {"format": PROBE_SCORES_FORMAT, "probe": str(probe), "probe_sha256": sha256_file(probe),
                             "task": FACTS_TASK, "items": [
                                 {"doc_id": d, "id": i, "hallucination_prob": None if not np.isfinite(p) else float(p)}
                                 for d, i, p in zip(base.doc_ids, base.ids, probs)]})


def read_probe_scores(path: Path, base: FactsItems) -> tuple[np.ndarray, dict[str, Any]]:
    doc = read_json(path, "abstention probe scores")
    by = {(int(r["doc_id"]), str(r["id"])): r["hallucination_prob"] for r in doc.get("items", [])}
    if set(by) != set(zip(base.doc_ids, base.ids)):
        raise InputError(f"{path} scores other items than the base model's {FACTS_TASK} log")
    probs = np.array([np.nan if by[k] is None else by[k] for k in zip(base.doc_ids, base.ids)], dtype=np.float64)
    return probs, {"probe": doc.get("probe"), "probe_sha256": doc.get("probe_sha256"), "file": str(path)}


def probe_measures(probs: np.ndarray, base: FactsItems, n_boot: int, seed: int, source: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The probe's AUROC against base wrongness (scored items) and its risk-coverage curve."""
    scored = np.isfinite(probs)
    wrong = ~base.accurate[scored]
    auroc = {"value": None, "ci95": None, "n": int(scored.sum()), "n_base_wrong": int(wrong.sum()),
             "ci_method": f"percentile bootstrap over items, stratified ({n_boot} resamples, seed {seed})",
             "note": None}
    if wrong.any() and not wrong.all():
        auroc["value"] = float(stats.auroc(probs[scored], wrong))
        auroc["ci95"] = list(stats.bootstrap_ci(stats.auroc, probs[scored], wrong, n_boot=n_boot, seed=seed,
                                                stratify=wrong))
    else:
        auroc["note"] = "the base model is right on every scored item or on none: AUROC undefined"
    return {**dict(source), "n_unscored": int((~scored).sum()),
            "rule": "abstain where the base model abstained or the probe's hallucination probability of its answer "
                    ">= threshold (unscored empty answers: never)",
            "auroc_vs_base_wrong": auroc, "curve": probe_curve(probs, base.abstain, base.hallucinated)}


# ============================================================================================ the plot
def plot_risk_coverage(path: Path, points: Sequence[tuple[str, Mapping[str, Any]]],
                       curve: Sequence[Mapping[str, Any]] | None = None, title: str = "") -> str:
    """Risk (hallucinations among answered) against coverage (answered): one marker per variant, the probe
    rule's curve when given."""
    from ..plots import figure, save_png

    plt, fig, ax = figure(5.6, 4.4)
    if curve:
        pts = [(c["coverage"], c["risk"]) for c in curve if c["risk"] is not None]
        pts.sort()
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#7f8c8d", lw=1.2, marker=".", ms=3,
                    label="probe as abstention rule (base answers)")
    markers = "osD^v<>P*Xh"
    for i, (label, point) in enumerate(points):
        if point.get("risk") is None:
            continue
        color = "#2c3e50" if label == "base" else ("#95a5a6" if label.lower().startswith("random") else None)
        ax.scatter([point["coverage"]], [point["risk"]], s=60, marker=markers[i % len(markers)], zorder=3,
                   color=color, label=label)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(bottom=-0.02)
    ax.set_xlabel("coverage (fraction answered)")
    ax.set_ylabel("risk (hallucinations / answered)")
    ax.set_title(title or f"risk-coverage on {FACTS_TASK}")
    ax.legend(loc="best", fontsize=7)
    return save_png(plt, fig, path)


# ================================================================================ the eval stage's block
def eval_block(base_run: Path, edited_run: Path, out: Path, *, n_boot: int, seed: int, lm=None,
               detector: str | None = None, force: bool = False) -> dict[str, Any]:
    """The ``abstention`` block of eval_results.json, with ``abstention_rc.png`` (and ``abstention_probe.json``
    when a detector is given) written into ``out``."""
    base, edited = read_items(base_run), read_items(edited_run)
    block = {"format": ABSTENTION_FORMAT, **abstention_measures(base, edited, n_boot=n_boot, seed=seed,
                                                              what=(f"{base_run}", f"{edited_run}"))}
    block["nonexist"] = nonexist_measures(_maybe_items(base_run, NONEXIST_TASK), _maybe_items(edited_run, NONEXIST_TASK))
    curve = None
    block["probe"] = None
    if detector is not None:
        probs = score_base_answers(lm, detector, base, force)
        write_probe_scores(out / PROBE_SCORES, detector, base, probs)
        block["probe"] = probe_measures(probs, base, n_boot, seed, {"probe": str(resolve_probe(detector)),
                                                                    "file": PROBE_SCORES})
        curve = block["probe"]["curve"]
    block["plot"] = plot_risk_coverage(out / ABSTENTION_PLOT, [("base", block["base"]["risk_coverage"]),
                                                               ("edited", block["edited"]["risk_coverage"])], curve)
    return block


# ======================================================================================= across evals
def is_control(name: str) -> bool:
    return name.lower().startswith("random")


def _eval_folder(folder: Path) -> tuple[dict[str, Any], FactsItems, FactsItems, FactsItems | None, FactsItems | None]:
    results = read_json(folder / EVAL_RESULTS, "eval results")
    runs = folder / "lm_eval"
    if not (runs / "base").is_dir() or not (runs / "edited").is_dir():
        raise InputError(f"{folder} holds no base and edited lm-eval runs: abstain-report compares edits with their "
                         f"base model (`hneurons eval --base BASE --model EDITED ...`)")
    return (results, read_items(runs / "base"), read_items(runs / "edited"), _maybe_items(runs / "base", NONEXIST_TASK),
            _maybe_items(runs / "edited", NONEXIST_TASK))


def _base_identity(results: Mapping[str, Any]) -> tuple[Any, Any]:
    model = ((results.get("models") or {}).get("base") or {}).get("model") or {}
    return model.get("weights_fingerprint"), model.get("architecture_hash")


def compare_abstention(eval_dirs: Sequence[str | Path], names: Sequence[str] | None, out: str | Path, *,
                       n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One table of abstention measures for several eval folders of the same base model and items; writes
    ``out/abstention.json``, ``out/abstention.md`` and ``out/abstention_rc.png`` and returns the document.

    Variants whose name starts with ``random`` are random controls (e.g. abstain edits of matched random neuron
    sets): each other variant gets its difference from their mean, with a CI that adds the between-set variance
    (:func:`editor.stats.minus_control_sets`) for the abstention AUROC (as the mean of per-item terms,
    :func:`auroc_terms`), accuracy, hallucination and abstention rates."""
    folders = [Path(d) for d in eval_dirs]
    if not folders:
        raise InputError("abstain-report needs at least one eval folder")
    names = list(names) if names else [f.name for f in folders]
    if len(names) != len(folders) or len(set(names)) != len(names):
        raise InputError(f"abstain-report needs one distinct name per eval folder; got {names}")
    loaded = [_eval_folder(f) for f in folders]
    ref_results, ref_base = loaded[0][0], loaded[0][1]
    ref_id = _base_identity(ref_results)
    for folder, (results, base, edited, _, _) in zip(folders, loaded):
        if _base_identity(results) != ref_id:
            raise InputError(f"{folder} evaluates another base model (weights fingerprint {_base_identity(results)[0]}) "
                             f"than {folders[0]} ({ref_id[0]}): compare edits of one base model")
        check_same_items(ref_base, base, f"{folders[0]} (base)", f"{folder} (base)")
        check_same_items(ref_base, edited, f"{folders[0]} (base)", f"{folder} (edited)")
    differ = {str(f): int((b.accurate != ref_base.accurate).sum() + (b.abstain != ref_base.abstain).sum())
              for f, (_, b, _, _, _) in zip(folders, loaded)}
    variants: dict[str, Any] = {}
    for name, folder, (results, _, edited, nb, ne) in zip(names, folders, loaded):
        block = abstention_measures(ref_base, edited, n_boot=n_boot, seed=seed, what=(f"{folders[0]} (base)", name))
        block["folder"] = str(folder)
        block["control"] = is_control(name)
        block["edited_model"] = (results.get("models") or {}).get("edited")
        block["nonexist"] = nonexist_measures(loaded[0][3], ne)
        block["other_metrics"] = other_metrics(results)
        variants[name] = block
    wrong = ~ref_base.accurate
    controls = [n for n in names if is_control(n)]
    versus = None
    if controls:
        versus = {}
        series = {n: {"abstention_auroc": auroc_terms(l[2].abstain, wrong) if wrong.any() and not wrong.all() else None,
                      "accuracy": l[2].accurate, "hallucination_rate": l[2].hallucinated,
                      "abstention_rate": l[2].abstain} for n, l in zip(names, loaded)}
        for name in (n for n in names if not is_control(n)):
            rows = {}
            for metric, values in series[name].items():
                if values is None:
                    rows[metric] = None
                    continue
                res = stats.minus_control_sets(np.asarray(values, dtype=np.float64),
                                               np.stack([np.asarray(series[c][metric], dtype=np.float64)
                                                         for c in controls]))
                rows[metric] = {"delta": res["delta"], "ci95": list(res["ci"]), "p_value": res["p_value"],
                                "n": res["n"], "sets": res["sets"], "se_items": res["se_items"],
                                "se_between_sets": res["se_between_sets"], "df": res["df"], "note": res["note"],
                                "control_mean": float(np.mean([np.mean(series[c][metric]) for c in controls]))}
            versus[name] = rows
    probe = None
    for folder in folders:
        if (folder / PROBE_SCORES).is_file():
            probs, source = read_probe_scores(folder / PROBE_SCORES, ref_base)
            probe = probe_measures(probs, ref_base, n_boot, seed, source)
            break
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": ABSTENTION_REPORT_FORMAT, "task": FACTS_TASK, "n": ref_base.n,
           "n_base_wrong": int(wrong.sum()), "base": variant_rates(ref_base) | {"folder": str(folders[0])},
           "base_model": (ref_results.get("models") or {}).get("base"),
           "base_outcomes_differ": differ, "variants": variants, "controls": controls,
           "minus_random_mean": versus, "probe": probe, "auroc_note": AUROC_NOTE,
           "settings": {"bootstrap": n_boot, "seed": seed},
           "files": {"json": "abstention.json", "table": "abstention.md", "plot": ABSTENTION_PLOT},
           "provenance": provenance()}
    plot_risk_coverage(out / ABSTENTION_PLOT, [("base", doc["base"]["risk_coverage"])]
                       + [(n, v["edited"]["risk_coverage"]) for n, v in variants.items()],
                       probe["curve"] if probe else None)
    atomic_write_text(out / "abstention.md", render_report(doc))
    atomic_write_json(out / "abstention.json", doc)
    return doc


OTHER_ROW_KEYS = ("task", "metric", "primary", "n", "base", "edited", "delta", "delta_ci95", "p_value", "p_holm",
                  "mde", "test")


def other_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """What else the eval folder measured, for the side-by-side table: every metric row except the facts task's
    (knowledge retention, the behaviour tasks: edited - base with its paired CI) and the KL on neutral prompts."""
    rows = [{k: row.get(k) for k in OTHER_ROW_KEYS} for row in results.get("metrics") or []
            if row.get("task") != FACTS_TASK and row.get("delta") is not None]
    kl = results.get("kl") or None
    return {"rows": rows, "kl": {k: kl.get(k) for k in ("mean", "ci95", "n_prompts")} if kl else None,
            "kl_note": results.get("kl_note")}


# ============================================================================================ rendering
def _pct(block: Mapping[str, Any] | None) -> str:
    if not block or block.get("value") is None:
        return "n/a"
    ci = block.get("ci95")
    return f"{100 * block['value']:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _num(block: Mapping[str, Any] | None) -> str:
    if not block or block.get("value") is None:
        return "n/a"
    ci = block.get("ci95")
    return f"{block['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _delta(block: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    if not block:
        return "n/a"
    lo, hi = block["ci95"]
    return f"{scale * block['delta']:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def variant_row(name: str, block: Mapping[str, Any]) -> str:
    e = block["edited"]
    return (f"| {name} | {_pct(e['accuracy'])} | {_pct(e['hallucination_rate'])} | {_pct(e['abstention_rate'])} | "
            f"{_pct(block['selectivity'])} (n={block['selectivity']['n']}) | {_num(block['abstention_auroc'])} | "
            f"{_delta(block['delta']['hallucination_rate'])} | {_delta(block['delta']['accuracy'])} |")


def render_report(doc: Mapping[str, Any]) -> str:
    """abstention.md: the table of :func:`compare_abstention`."""
    b = doc["base"]
    lines = [f"# Abstention on {doc['task']} ({doc['n']} items, base wrong on {doc['n_base_wrong']})", "",
             f"Base model: accuracy {_pct(b['accuracy'])}, hallucination {_pct(b['hallucination_rate'])}, "
             f"abstention {_pct(b['abstention_rate'])} (%, Wilson 95% CIs).", "",
             "| variant | accuracy % | hallucination % | abstention % | selectivity % | abstention AUROC | "
             "d hallucination (pt) | d accuracy (pt) |", "|---|---|---|---|---|---|---|---|"]
    lines += [variant_row(n, v) for n, v in doc["variants"].items()]
    lines += ["", "Selectivity: of the items the variant abstains on, the share the base model got wrong (Wilson "
              "95% CI). Abstention AUROC: against base wrongness, percentile bootstrap 95% CI. Deltas: variant - base "
              "in points, exact McNemar mid-p 95% CI. " + doc["auroc_note"] + "."]
    if doc.get("minus_random_mean"):
        lines += ["", f"## Minus the mean of the random controls ({', '.join(doc['controls'])})", "",
                  "| variant | abstention AUROC | accuracy (pt) | hallucination (pt) | abstention (pt) |",
                  "|---|---|---|---|---|"]
        for name, rows in doc["minus_random_mean"].items():
            lines.append(f"| {name} | {_delta(rows['abstention_auroc'], 1.0, 3)} | {_delta(rows['accuracy'])} | "
                         f"{_delta(rows['hallucination_rate'])} | {_delta(rows['abstention_rate'])} |")
        lines += ["", "95% CIs with item and between-set variance (t, sets - 1 df; editor.stats.minus_control_sets)."]
    lines += other_metrics_table(doc["variants"])
    probe = doc.get("probe")
    if probe:
        lines += ["", f"Probe ({probe.get('probe')}) as an abstention rule on the base answers: AUROC against base "
                      f"wrongness {_num(probe['auroc_vs_base_wrong'])} (n={probe['auroc_vs_base_wrong']['n']}), the "
                      f"ceiling for an abstention AUROC; its risk-coverage curve is in {ABSTENTION_PLOT}."]
    return "\n".join(lines) + "\n"


def other_metrics_table(variants: Mapping[str, Any]) -> list[str]:
    """Retention, behaviour and KL of every variant (edited - base, paired 95% CI; Holm-adjusted p of its own
    eval report)."""
    keys: list[tuple[str, str]] = []
    for block in variants.values():
        for row in (block.get("other_metrics") or {}).get("rows", []):
            if (row["task"], row["metric"]) not in keys:
                keys.append((row["task"], row["metric"]))
    if not keys:
        return []
    lines = ["", "## Retention, behaviour and KL (edited - base)", "",
             "| variant | " + " | ".join(f"{t} {m}" for t, m in keys) + " | KL nats |",
             "|---|" + "---|" * (len(keys) + 1)]
    for name, block in variants.items():
        other = block.get("other_metrics") or {}
        by = {(r["task"], r["metric"]): r for r in other.get("rows", [])}
        cells = []
        for key in keys:
            row = by.get(key)
            if row is None or row.get("delta_ci95") is None:
                cells.append("n/a" if row is None else f"{row['delta']:+.3f}")
                continue
            lo, hi = row["delta_ci95"]
            cells.append(f"{row['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={row['n']})")
        kl = other.get("kl")
        cells.append(f"{kl['mean']:.4f}" if kl and kl.get("mean") is not None else "n/a (same weights)"
                     if other.get("kl_note") else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Rates and accuracies as fractions, margins in nats; the paired test of each eval report (exact "
              "McNemar mid-p or paired t)."]
    return lines


def summary_lines(block: Mapping[str, Any]) -> list[str]:
    """A few lines on an eval's abstention block (the CLI and the model card)."""
    e, b = block["edited"], block["base"]
    lines = [f"abstention on {block['task']} ({block['n']} items, base wrong on {block['n_base_wrong']}): "
             f"abstention {_pct(b['abstention_rate'])} -> {_pct(e['abstention_rate'])} %, hallucination "
             f"{_pct(b['hallucination_rate'])} -> {_pct(e['hallucination_rate'])} %, accuracy "
             f"{_pct(b['accuracy'])} -> {_pct(e['accuracy'])} %",
             f"  selectivity {_pct(block['selectivity'])} % of {block['selectivity']['n']} abstentions on base-wrong "
             f"items; abstention AUROC {_num(block['abstention_auroc'])} (abstains on "
             f"{_pct(block['abstention_on_base_wrong'])} % of base-wrong, {_pct(block['abstention_on_base_right'])} % "
             f"of base-right items)"]
    if block.get("probe"):
        lines.append(f"  probe AUROC against base wrongness (ceiling): {_num(block['probe']['auroc_vs_base_wrong'])}")
    if block.get("nonexist"):
        ne = block["nonexist"]
        lines.append(f"  refusal on fabricated entities ({ne['n']} items): {_pct(ne['base'])} -> {_pct(ne['edited'])} %")
    return lines
