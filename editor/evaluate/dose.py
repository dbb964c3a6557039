"""The dose-response: does scaling the H-Neurons move a metric more than scaling random neurons does?

Every metric (and every judge-free margin) of every selected task is measured at each alpha of a grid that spans
suppression and amplification (default 0, 0.5, 1, 1.5, 2, 3), for the H-Neuron set and for ``controls`` random
sets matched to it per layer (:func:`editor.model.neuron_set.matched_random_pairs`), all as run-time edits
(forward pre-hooks on one loaded base model: :func:`editor.model.hooks.scaled_neurons`). alpha = 1 is the
unedited model for every set: it is scored once and shared.

Statistics (docs/METHOD.md section 8), for a metric that is the mean of per-item values (items paired across
every variant):

* **value per alpha** with a 95% percentile bootstrap CI over items (``ci_iters`` resamples, ``ci_seed``);
* **slope per unit alpha**: the least-squares slope of the value on alpha over the grid. It is linear in the
  values, so it is the mean over items of the per-item slopes s_i = sum_a w_a v_{a,i}, w_a = (a - mean a) / S_aa;
  its CI is a percentile bootstrap over items (the same resampled items for every set);
* **H minus random**: slope_H - mean slope of the random sets, per item d_i = s_{H,i} - mean_s s_{s,i}, with
  variance var(d) / n + var_s(slope_s) / k (items and the between-set variance;
  :func:`editor.stats.minus_control_sets`), a t CI with k - 1 df and its two-sided p-value, Holm-
  adjusted across the rows (``p_holm``) and across the tasks' primary metrics (``p_holm_primary``);
* **rank**: where H's slope falls among the random sets' slopes (1 = the largest of k + 1).

Metrics that are not item means get their values and a least-squares slope without CIs.

Output folder (docs/ARTIFACTS.md): ``dose_response.json`` (format ``hneurons.dose_response/1``), one PNG per task
``dose_<task>.png`` (each metric vs alpha: H-Neurons as a line with its band, the random sets as a grey band and
grey lines), ``dose_slopes.png`` (every row's slope, H with its CI, the random sets as grey points),
``lm_eval/alpha_1/`` (the base model, scored once), ``lm_eval/<set>_alpha_<A>/`` (H or random_seed<S>; resumable
like every eval run), ``kl/`` when KL is measured, ``known_facts.json`` when behaviour tasks are selected.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..artifacts import atomic_write_json, provenance, sha256_file
from ..errors import InputError
from ..formats import (
    DOSE_COUNTS,
    DOSE_COUNTS_FORMAT,
    DOSE_COUNTS_PLOT,
    DOSE_FORMAT,
    DOSE_REPORT,
    DOSE_SLOPES_PLOT,
    DOSE_TASK_PLOT,
    NEURONS_PATH,
)
from ..locking import output_lock
from ..model.loading import LoadedModel, LoadOptions, load_model
from ..model.neuron_set import NeuronSet, as_neuron_set
from ..paths import portable_path
from ..plots import figure, save_png
from ..text import fmt
from .kl import kl_divergences, kl_sequences, stored_kl, write_kl_files
from .lm_eval_run import LmEvalRun, prepare_environment, run_lm_eval, task_manager
from .settings import DoseSettings
from .stage import check_out, known_facts_manager, known_facts_summary, preflight
from .variants import Variant, random_control

log = logging.getLogger(__name__)

REFERENCE_ALPHA = 1.0
H_SET = "H"


# ========================================================================================= the statistics
def slope_weights(alphas: Sequence[float]) -> np.ndarray:
    """w with slope = w @ values: the least-squares slope of values on alphas."""
    a = np.asarray(alphas, dtype=np.float64)
    centred = a - a.mean()
    sxx = float((centred ** 2).sum())
    if sxx == 0:
        raise InputError("a slope needs at least two different alphas")
    return centred / sxx


def dose_statistics(alphas: Sequence[float], values: Mapping[str, np.ndarray], *, h: str = H_SET,
                    iters: int = 2000, seed: int = 0, level: float = 0.05) -> dict[str, Any]:
    """The dose-response of one metric from per-item values ``values[set]`` of shape [alphas, items] (the same
    items in every set and at every alpha; ``h`` names the H-Neuron set, the others are random sets).

    Returns ``sets`` {name: {values, values_ci95, slope, slope_ci95}}, ``random`` (mean / min / max value per
    alpha, slope mean and sd over sets), ``h_minus_random`` (slope difference, CI, p-value, standard errors of
    items and of sets, df) and ``h_rank`` (1 = H's slope is the largest of k + 1)."""
    names = list(values)
    if h not in values or len(names) < 2:
        raise InputError(f"dose_statistics needs the set {h!r} and at least one random set; got {names}")
    mats = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    shape = mats[h].shape
    if len(shape) != 2 or shape[0] != len(alphas) or any(m.shape != shape for m in mats.values()):
        raise InputError(f"dose_statistics needs [alphas={len(alphas)}, items] arrays of one shape; got "
                         f"{ {k: m.shape for k, m in mats.items()} }")
    n = shape[1]
    if n < 2:
        raise InputError(f"dose_statistics needs at least 2 items; got {n}")
    w = slope_weights(alphas)
    per_item_slope = {k: w @ m for k, m in mats.items()}  # [items]
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(iters, n))
    q = [100 * level / 2, 100 * (1 - level / 2)]
    out_sets: dict[str, Any] = {}
    for name, m in mats.items():
        boot_values = np.stack([m[a][index].mean(axis=1) for a in range(len(alphas))])  # [alphas, iters]
        lo, hi = np.percentile(boot_values, q, axis=1)
        boot_slope = per_item_slope[name][index].mean(axis=1)
        s_lo, s_hi = np.percentile(boot_slope, q)
        out_sets[name] = {"values": m.mean(axis=1).tolist(), "values_ci95": [[float(a), float(b)] for a, b in
                                                                             zip(lo, hi)],
                          "slope": float(per_item_slope[name].mean()), "slope_ci95": [float(s_lo), float(s_hi)]}
    randoms = [k for k in names if k != h]
    random_values = np.array([out_sets[k]["values"] for k in randoms])
    random_slopes = np.array([out_sets[k]["slope"] for k in randoms])
    diff = stats.minus_control_sets(per_item_slope[h], np.array([per_item_slope[k] for k in randoms]))
    h_slope = out_sets[h]["slope"]
    constant = _constant_note(mats)
    above = int((random_slopes > h_slope).sum())
    ties = int((random_slopes == h_slope).sum())
    return {
        "sets": out_sets,
        "random": {"values_mean": random_values.mean(axis=0).tolist(), "values_min": random_values.min(axis=0).tolist(),
                   "values_max": random_values.max(axis=0).tolist(), "slope_mean": float(random_slopes.mean()),
                   "slope_sd": float(random_slopes.std(ddof=1)) if len(randoms) > 1 else None, "sets": len(randoms)},
        "h_minus_random": {"slope_difference": diff["delta"], "ci95": list(diff["ci"]), "p_value": diff["p_value"],
                           "se_items": diff["se_items"], "se_between_sets": diff["se_between_sets"], "df": diff["df"],
                           "note": constant or diff["note"]},
        "h_rank": {"rank": 1 + above + ties / 2, "of": len(randoms) + 1,
                   "meaning": "1 = H's slope is the largest; k + 1 = the smallest"},
    }


def _constant_note(mats: Mapping[str, np.ndarray]) -> str | None:
    """A row on which no item of any set moves at any alpha measures nothing: its bootstrap intervals have
    width 0 and say so only by being degenerate (Gemma 3 270M never gives up a known answer: flip rate 0)."""
    first = next(iter(mats.values())).flat[0]
    if any((m != first).any() for m in mats.values()):
        return None
    n = next(iter(mats.values())).shape[1]
    note = f"every item scores {first:g} in every set at every alpha: nothing varies, the intervals are degenerate"
    if first in (0.0, 1.0):  # a rate: the exact (Clopper-Pearson) 95% bound that n items without an event allow
        bound = 1 - 0.025 ** (1 / n)
        note += (f"; each rate is below {bound:.3f}" if first == 0 else f"; each rate is above {1 - bound:.3f}") + \
            f" (exact 95% bound for {n} items)"
    return note


def plain_statistics(alphas: Sequence[float], values: Mapping[str, Sequence[float]], h: str = H_SET) -> dict:
    """Values per alpha and least-squares slopes without CIs (metrics that are not item means)."""
    w = slope_weights(alphas)
    sets = {k: {"values": [float(x) for x in v], "values_ci95": None, "slope": float(w @ np.asarray(v, float)),
                "slope_ci95": None} for k, v in values.items()}
    slopes = [s["slope"] for k, s in sets.items() if k != h]
    vals = np.array([s["values"] for k, s in sets.items() if k != h])
    return {"sets": sets,
            "random": {"values_mean": vals.mean(axis=0).tolist(), "values_min": vals.min(axis=0).tolist(),
                       "values_max": vals.max(axis=0).tolist(), "slope_mean": float(np.mean(slopes)),
                       "slope_sd": float(np.std(slopes, ddof=1)) if len(slopes) > 1 else None, "sets": len(slopes)},
            "h_minus_random": {"slope_difference": sets[h]["slope"] - float(np.mean(slopes)), "ci95": None,
                               "p_value": None, "se_items": None, "se_between_sets": None, "df": None,
                               "note": "not a mean of per-item values: no CI"},
            "h_rank": {"rank": 1 + sum(s > sets[h]["slope"] for s in slopes), "of": len(slopes) + 1,
                       "meaning": "1 = H's slope is the largest; k + 1 = the smallest"}}


def holm_rows(rows: list[dict[str, Any]]) -> None:
    """Holm across the rows' H-minus-random p-values, and across the primary rows alone."""
    for key, subset in (("p_holm", None), ("p_holm_primary", "primary")):
        chosen = [r for r in rows if r["h_minus_random"]["p_value"] is not None and (subset is None or r[subset])]
        for r in rows:
            r["h_minus_random"].setdefault(key, None)
        for r, p in zip(chosen, stats.holm([r["h_minus_random"]["p_value"] for r in chosen])):
            r["h_minus_random"][key] = p
    for r in rows:
        r["h_minus_random"]["significant"] = (None if r["h_minus_random"]["p_holm"] is None
                                              else r["h_minus_random"]["p_holm"] <= 0.05)


# ============================================================================================ running it
@dataclass
class DoseReport:
    out: Path
    results: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.results["rows"]

    def summary(self) -> str:
        return render_summary(self.results)


def folder_name(set_name: str, alpha: float) -> str:
    return "alpha_1" if alpha == REFERENCE_ALPHA else f"{set_name}_alpha_{alpha:g}"


def dose_response(
    base: str | LoadedModel,
    neurons: Any,
    settings: DoseSettings | None = None,
    *,
    out: str | Path,
    force: bool = False,
    overwrite: bool = False,
    load: LoadOptions | None = None,
    **fields: Any,
) -> DoseReport:
    """Run the dose-response of ``neurons`` on ``base`` and write ``out/dose_response.json`` and its figures.

    ``settings`` (:class:`~editor.evaluate.settings.DoseSettings`, or its fields as keywords) hold the grid, the
    number of matched random sets, the tasks and the statistics. Re-running into the same ``out`` reuses every
    variant whose lm-eval results exist with the same settings."""
    settings = DoseSettings.of(settings, **fields)
    prepare_environment(settings)
    out = Path(out)
    nset = as_neuron_set(neurons)  # a file that is no neuron set is named before any model loads
    if nset.neuron_alpha:
        raise InputError(f"{nset.path or 'the neuron set'} gives {len(nset.neuron_alpha)} neuron(s) their own alpha; "
                         f"the dose-response scales every neuron by the grid's alpha. Remove the per-neuron alphas")
    count_sets = path_sets(nset, settings.neuron_sets)  # named before any model loads
    preflight(settings, [base], load)
    with output_lock(out):
        check_out(out, settings, overwrite, DOSE_REPORT, "a dose-response")
        lm = base if isinstance(base, LoadedModel) else load_model(str(base), load)
        for members in (nset, *count_sets.values()):
            members.validate(lm, force=force)
        report = _dose(lm, nset, settings, out, force)
        if count_sets:
            # the unedited model's runs (alpha 1, known facts) come from the results cache after the first set
            by_count = {"chosen": report.results} | {
                name: _dose(lm, members, settings, out / f"count_{name}", force).results
                for name, members in count_sets.items()}
            report.results["neuron_count"] = write_count_summary(out, by_count)
            atomic_write_json(out / DOSE_REPORT, report.results)
        return report


def path_sets(nset: NeuronSet, names: Sequence[str]) -> dict[str, NeuronSet]:
    """The named sets of ``neurons_path.json`` beside the neuron file (locate writes both)."""
    if not names:
        return {}
    if nset.path is None:
        raise InputError(f"--neuron-sets {','.join(names)} names sets of locate's neurons_path.json, which is found "
                         f"beside the neuron file; this neuron set was not read from a file")
    path_file = nset.path.parent / NEURONS_PATH
    if not path_file.is_file():
        raise InputError(f"--neuron-sets {','.join(names)}: {path_file} not found (locate writes it beside "
                         f"{nset.path.name}; re-run locate, or leave --neuron-sets out)")
    return {name: NeuronSet.load(path_file, name=name) for name in names}


def _dose(lm: LoadedModel, nset: NeuronSet, settings: DoseSettings, out: Path, force: bool) -> DoseReport:
    started = time.time()
    grid = settings.grid
    sets: dict[str, NeuronSet] = {H_SET: nset}
    for seed in settings.control_seeds:
        sets[f"random_seed{seed}"] = random_control(nset, lm.num_layers, lm.d_ff, seed, settings.match_layers)
    manager, known = known_facts_manager(lm, settings, out)
    if settings.known_only and known is not None:
        manager = task_manager(settings, {**(manager.metadata or {}), "known_only": True})
    base_variant = Variant("alpha_1", lm)
    reference = run_lm_eval(base_variant, settings, out / "lm_eval" / "alpha_1", manager)  # scored once
    runs: dict[str, dict[float, LmEvalRun]] = {}
    variants: dict[tuple[str, float], Variant] = {}
    for name, members in sets.items():
        runs[name] = {REFERENCE_ALPHA: reference}
        for alpha in grid:
            if alpha == REFERENCE_ALPHA:
                continue
            variant = Variant(folder_name(name, alpha), lm, neurons=members,
                              alphas={p: alpha for p in members.neurons},
                              seed=None if name == H_SET else int(name.removeprefix("random_seed")),
                              match_layers=settings.match_layers)
            variants[(name, alpha)] = variant
            runs[name][alpha] = run_lm_eval(variant, settings, out / "lm_eval" / variant.name, manager)
    kl = _kl(lm, base_variant, variants, grid, settings, out) if settings.kl else None
    rows = analyse(reference, runs, grid, settings.ci_iters, settings.ci_seed,
                   known_only=settings.known_only and known is not None)
    results = {
        "format": DOSE_FORMAT,
        "model": lm.identity(),
        "neurons": _describe_set(nset) | {"source_file": nset.source},
        "sets": [{"name": name, "kind": "h_neurons" if name == H_SET else "random_matched",
                  "seed": None if name == H_SET else int(name.removeprefix("random_seed"))} | _describe_set(members)
                 for name, members in sets.items()],
        "grid": grid,
        "reference_alpha": REFERENCE_ALPHA,
        "splits": {t: reference.split_of(t) for t in reference.leaf_tasks()},
        "settings": settings.describe() | {"apply_chat_template": settings.chat_for(lm.tokenizer),
                                           "control_seeds": settings.control_seeds},
        "statistics": {
            "value_ci": "95% percentile bootstrap over items",
            "slope": "least squares of the value on alpha over the grid, per unit alpha; CI: percentile bootstrap "
                     "over items (the same resampled items for every set)",
            "h_minus_random": "slope_H - mean slope of the random sets; variance var_items(d_i)/n + "
                              "var(random slopes)/k, t CI with k - 1 df; Holm across rows (p_holm) "
                              "and across primary metrics (p_holm_primary)",
            "rank": "1 = H's slope is the largest among H and the random sets",
        },
        "rows": rows,
        "kl": kl,
        "known_facts": known_facts_summary(known),
        "force": {"given": force},
        "wall_time_s": round(time.time() - started, 1),
        "provenance": provenance(),
    }
    results["files"] = plot_dose(out, results)
    atomic_write_json(out / DOSE_REPORT, results)
    return DoseReport(out, results)


def _describe_set(members: NeuronSet) -> dict[str, Any]:
    return {"sha256": members.sha256, "count": len(members),
            "per_layer": {str(k): v for k, v in members.per_layer().items()}}


def _kl(lm, base_variant, variants, grid, settings: DoseSettings, out: Path) -> dict[str, Any]:
    seqs = kl_sequences(lm, settings)
    by_name = {v.name: v for v in variants.values()}
    # a re-run (more sets, another report) measures only the variants without a stored KL on these sequences
    per_variant = {name: stored_kl(out / "kl", v, seqs) for name, v in by_name.items()}
    missing = [by_name[name] for name, values in per_variant.items() if values is None]
    if len(missing) < len(by_name):
        log.info("KL: %d of %d variants found in %s, measuring %d", len(by_name) - len(missing), len(by_name),
                 out / "kl", len(missing))
    per_variant.update(kl_divergences(base_variant, missing, seqs, settings.batch_size))
    write_kl_files(out / "kl", seqs, lm.tokenizer, per_variant, by_name)
    means: dict[str, list[float]] = {}
    for (name, alpha), variant in variants.items():
        means.setdefault(name, [0.0] * len(grid))[grid.index(alpha)] = float(np.mean(per_variant[variant.name]))
    return {"direction": "KL(base || edited), nats per position, mean over positions then prompts",
            "n_prompts": len(seqs.prompts), "new_tokens": settings.kl_new_tokens,
            "chat_template": settings.chat_for(lm.tokenizer), "prompts_file": portable_path(settings.kl_prompts),
            "prompts_sha256": sha256_file(settings.kl_prompts), "mean_per_alpha": means}


def _item_matrix(runs: Mapping[float, LmEvalRun], grid, key) -> tuple[np.ndarray | None, int]:
    task, metric, filt = key
    per_alpha = [runs[a].per_item(task, metric, filt) for a in grid]
    if any(p is None or not p for p in per_alpha):
        return None, 0
    for a, p in zip(grid, per_alpha):
        value = runs[a].value(task, metric, filt)
        if value is None or not math.isclose(float(np.mean(list(p.values()))), value, rel_tol=1e-9, abs_tol=1e-9):
            return None, 0
    docs = sorted(per_alpha[0])
    for a, p in zip(grid, per_alpha):
        if sorted(p) != docs:
            raise InputError(f"{task} {metric}: the variants scored different items ({len(docs)} vs {len(p)} at alpha "
                             f"{a:g}); were they run with the same tasks, limit and known facts?")
    return np.array([[p[d] for d in docs] for p in per_alpha]), len(docs)


def analyse(reference: LmEvalRun, runs: Mapping[str, Mapping[float, LmEvalRun]], grid: Sequence[float],
            iters: int, seed: int, known_only: bool = False) -> list[dict[str, Any]]:
    """One row per (task, metric, filter) the reference run reports: the dose-response statistics. With
    ``known_only`` (only known facts scored) a metric with a ``_known`` twin repeats it and is left out."""
    rows = []
    for task in reference.leaf_tasks():
        primary = reference.primary_metric(task)
        keys = reference.metric_keys(task)
        for metric, filt in keys:
            if known_only and (f"{metric}_known", filt) in keys:
                continue
            key = (task, metric, filt)
            if reference.value(task, metric, filt) is None or not math.isfinite(reference.value(task, metric, filt)):
                continue
            mats = {name: _item_matrix(set_runs, grid, key) for name, set_runs in runs.items()}
            row: dict[str, Any] = {"task": task, "metric": metric, "filter": filt, "primary": metric == primary,
                                   "higher_is_better": reference.higher_is_better(task, metric)}
            if all(m is not None for m, _ in mats.values()):
                row["n"] = next(iter(mats.values()))[1]
                row["per_item"] = True
                row.update(dose_statistics(grid, {k: m for k, (m, _) in mats.items()}, iters=iters, seed=seed))
            else:
                values = {name: [set_runs[a].value(task, metric, filt) for a in grid] for name, set_runs in runs.items()}
                if any(v is None for vs in values.values() for v in vs):
                    continue
                row["n"] = reference.results.get("n-samples", {}).get(task, {}).get("effective")
                row["per_item"] = False
                row.update(plain_statistics(grid, values))
            rows.append(row)
    holm_rows(rows)
    return rows


# ============================================================================================ neuron count
def count_rows(by_count: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, metric): H's slope, the random sets' mean slope (sd) and H - random with its CI, at every
    neuron count (the chosen set and the path sets), ordered by count."""
    order = sorted(by_count, key=lambda name: by_count[name]["neurons"]["count"])
    table: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name in order:
        doc = by_count[name]
        for r in doc["rows"]:
            row = table.setdefault((r["task"], r["metric"], r["filter"]), {
                "task": r["task"], "metric": r["metric"], "filter": r["filter"], "primary": r["primary"],
                "higher_is_better": r["higher_is_better"], "counts": []})
            d = r["h_minus_random"]
            row["counts"].append({"set": name, "count": doc["neurons"]["count"], "n": r["n"],
                                  "h_slope": r["sets"][H_SET]["slope"], "h_slope_ci95": r["sets"][H_SET]["slope_ci95"],
                                  "random_slope_mean": r["random"]["slope_mean"],
                                  "random_slope_sd": r["random"]["slope_sd"],
                                  "h_minus_random": d["slope_difference"], "h_minus_random_ci95": d["ci95"],
                                  "p_holm": d.get("p_holm"), "h_rank": r["h_rank"]})
    return list(table.values())


def write_count_summary(out: Path, by_count: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``dose_counts.json`` and ``dose_counts.png``: the slopes vs neuron count; returns the report's block."""
    rows = count_rows(by_count)
    doc = {"format": DOSE_COUNTS_FORMAT,
           "sets": {name: {"count": d["neurons"]["count"], "source": d["neurons"].get("source_file"),
                           "folder": "." if name == "chosen" else f"count_{name}"} for name, d in by_count.items()},
           "rows": rows, "provenance": provenance()}
    atomic_write_json(out / DOSE_COUNTS, doc)
    figure_file = _counts_figure(out, [r for r in rows if r["primary"]] or rows)
    return {"file": DOSE_COUNTS, "figure": figure_file, "sets": doc["sets"]}


def _counts_figure(out: Path, rows) -> str:
    cols = min(3, len(rows))
    n_rows = math.ceil(len(rows) / cols)
    plt, fig, axes = figure(4.0 * cols, 3.0 * n_rows, rows=n_rows, cols=cols, dpi=100)
    for ax, r in zip(axes.flat, rows):
        counts = [c["count"] for c in r["counts"]]
        h = [c["h_slope"] for c in r["counts"]]
        lo = [c["h_slope_ci95"][0] if c["h_slope_ci95"] else c["h_slope"] for c in r["counts"]]
        hi = [c["h_slope_ci95"][1] if c["h_slope_ci95"] else c["h_slope"] for c in r["counts"]]
        mean = np.array([c["random_slope_mean"] for c in r["counts"]])
        sd = np.array([c["random_slope_sd"] or 0.0 for c in r["counts"]])
        ax.fill_between(counts, mean - sd, mean + sd, color=_RANDOM_COLOR, alpha=0.25, lw=0,
                        label="random sets, mean +- sd")
        ax.plot(counts, mean, color=_RANDOM_COLOR, lw=1)
        ax.fill_between(counts, lo, hi, color=_H_COLOR, alpha=0.18, lw=0)
        ax.plot(counts, h, "o-", color=_H_COLOR, ms=3.5, label="H-Neurons (95% CI)")
        ax.axhline(0, color="black", lw=0.5, alpha=0.4)
        ax.set_xscale("log")
        ax.set_title(f"{r['task']}\n{'[primary] ' if r['primary'] else ''}{r['metric']}", fontsize=8)
        ax.set_xlabel("neurons in the set", fontsize=8)
        ax.set_ylabel("slope per unit alpha", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle("dose-response slope vs neuron count (locate's regularisation path)", fontsize=10)
    return save_png(plt, fig, out / DOSE_COUNTS_PLOT)


# ============================================================================================= rendering
def render_summary(results: Mapping[str, Any]) -> str:
    """One line per row: H's slope with its CI, the random sets' mean (sd), the difference and its CI, rank."""
    head = ["task", "metric", "n", "H slope [95% CI]", "random slope (sd)", "H - random [95% CI]", "p Holm", "rank"]
    lines = [head]
    for r in results["rows"]:
        h = r["sets"][H_SET]
        d = r["h_minus_random"]
        ci = h["slope_ci95"]
        dci = d["ci95"]
        sd = r["random"]["slope_sd"]
        lines.append([r["task"], ("* " if r["primary"] else "") + r["metric"], str(r["n"] if r["n"] is not None else "-"),
                      fmt(h["slope"], signed=True) + (f" [{fmt(ci[0], signed=True)}, {fmt(ci[1], signed=True)}]" if ci else ""),
                      fmt(r["random"]["slope_mean"], signed=True) + (f" ({fmt(sd)})" if sd is not None else ""),
                      fmt(d["slope_difference"], signed=True)
                      + (f" [{fmt(dci[0], signed=True)}, {fmt(dci[1], signed=True)}]" if dci else ""),
                      "-" if d.get("p_holm") is None else ("<0.001" if d["p_holm"] < 0.001 else f"{d['p_holm']:.3f}"),
                      f"{r['h_rank']['rank']:g}/{r['h_rank']['of']}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    grid = ", ".join(f"{a:g}" for a in results["grid"])
    text.append(f"slopes per unit alpha over alpha {grid}; {len(results['sets']) - 1} random sets matched per layer; "
                f"* = the task's primary metric; p Holm: H - random slope, Holm across rows; rank 1 = H's slope "
                f"is the largest")
    text += [f"note: {r['task']} {r['metric']}: {r['h_minus_random']['note']}" for r in results["rows"]
             if r["h_minus_random"].get("note")]
    kl = results.get("kl")
    if kl:
        h = kl["mean_per_alpha"].get(H_SET, [])
        text.append("mean KL(base || edited) per alpha, H-Neurons: " + ", ".join(fmt(v) for v in h))
    return "\n".join(text)


_H_COLOR, _RANDOM_COLOR = "#c0392b", "#7f8c8d"


def plot_dose(out: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """One PNG per task (each metric vs alpha) and the slope summary; returns the file names."""
    tasks: dict[str, list[Mapping[str, Any]]] = {}
    for r in results["rows"]:
        tasks.setdefault(r["task"], []).append(r)
    files = {"tasks": {}, "slopes": None}
    for task, rows in tasks.items():
        files["tasks"][task] = _task_figure(out, task, sorted(rows, key=lambda r: not r["primary"]), results["grid"])
    if results["rows"]:
        files["slopes"] = _slopes_figure(out, results["rows"])
    return files


def _task_figure(out: Path, task: str, rows, grid) -> str:
    cols = min(3, len(rows))
    n_rows = math.ceil(len(rows) / cols)
    plt, fig, axes = figure(4.0 * cols, 3.0 * n_rows, rows=n_rows, cols=cols, dpi=100)
    for ax, r in zip(axes.flat, rows):
        h = r["sets"][H_SET]
        rnd = r["random"]
        ax.fill_between(grid, rnd["values_min"], rnd["values_max"], color=_RANDOM_COLOR, alpha=0.25, lw=0,
                        label=f"random sets ({rnd['sets']}, range)")
        for name, s in r["sets"].items():
            if name != H_SET:
                ax.plot(grid, s["values"], color=_RANDOM_COLOR, lw=0.8, alpha=0.8)
        if h["values_ci95"]:
            ax.fill_between(grid, [c[0] for c in h["values_ci95"]], [c[1] for c in h["values_ci95"]], color=_H_COLOR,
                            alpha=0.18, lw=0)
        ax.plot(grid, h["values"], "o-", color=_H_COLOR, ms=3.5, label="H-Neurons (95% CI)")
        ax.axvline(1.0, color="black", lw=0.5, alpha=0.4)
        hib = {True: "higher is better", False: "lower is better", None: ""}[r["higher_is_better"]]
        d = r["h_minus_random"]
        ax.set_title(f"{'[primary] ' if r['primary'] else ''}{r['metric']} ({hib})\nslope H - random "
                     f"{fmt(d['slope_difference'], signed=True)}"
                     + (f" [{fmt(d['ci95'][0], signed=True)}, {fmt(d['ci95'][1], signed=True)}]" if d["ci95"] else ""),
                     fontsize=8)
        ax.set_xlabel("alpha", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{task}: dose-response (n = {rows[0]['n']})", fontsize=10)
    return save_png(plt, fig, out / DOSE_TASK_PLOT.format(task=task))


def _slopes_figure(out: Path, rows) -> str:
    plt, fig, ax = figure(7.5, 0.32 * len(rows) + 1.5)
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows):
        for name, s in r["sets"].items():
            if name != H_SET:
                ax.scatter([s["slope"]], [y], s=14, color=_RANDOM_COLOR, zorder=2)
        h = r["sets"][H_SET]
        ci = h["slope_ci95"]
        err = [[h["slope"] - ci[0]], [ci[1] - h["slope"]]] if ci else None
        ax.errorbar([h["slope"]], [y], xerr=err, fmt="o", color=_H_COLOR, ms=4, capsize=2, zorder=3)
    ax.scatter([], [], s=14, color=_RANDOM_COLOR, label="random sets (matched per layer)")
    ax.errorbar([], [], xerr=[], fmt="o", color=_H_COLOR, label="H-Neurons (95% CI)")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{'* ' if r['primary'] else ''}{r['task']} {r['metric']}" for r in rows], fontsize=7)
    ax.set_xlabel("slope per unit alpha (* = primary metric)")
    ax.legend(fontsize=7, loc="best")
    return save_png(plt, fig, out / DOSE_SLOPES_PLOT)
