"""Base vs edited vs controls, metric by metric: paired per-item statistics of two lm-eval runs of the
same items (the rows of eval_results.json; docs/METHOD.md section 8)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import stats
from ..errors import InputError
from ..text import finite
from .lm_eval_run import LmEvalRun


def paired_bootstrap(base: Sequence[float], edited: Sequence[float], iters: int, seed: int
                     ) -> tuple[list[float] | None, float | None]:
    """95% percentile CI of mean(edited - base) over resampled items and the two-sided bootstrap p-value
    (:func:`editor.stats.paired_bootstrap_delta`); (None, None) when there is nothing to resample."""
    if len(base) == 0 or iters <= 0:
        return None, None
    result = stats.paired_bootstrap_delta(base, edited, n_boot=iters, seed=seed)
    return list(result["ci"]), result["p_value"]


def mean_ci(values: Sequence[float], iters: int, seed: int) -> list[float] | None:
    """95% percentile bootstrap CI of the mean (:func:`editor.stats.bootstrap_ci`)."""
    if len(values) == 0 or iters <= 0:
        return None
    return list(stats.bootstrap_ci(lambda v: v.mean(axis=-1), np.asarray(values, dtype=np.float64), n_boot=iters,
                                   seed=seed))


def spread(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "min": float(arr.min()), "max": float(arr.max())}


def _paired(a: Mapping[int, float], b: Mapping[int, float], what: str) -> list[int]:
    if set(a) != set(b):
        raise InputError(f"{what}: the runs scored different items ({len(a)} vs {len(b)} docs); were they run with "
                         f"the same tasks and limit?")
    return sorted(a)


def _is_item_mean(run: LmEvalRun, task: str, metric: str, filt: str, items: Mapping[int, float] | None) -> bool:
    value = run.value(task, metric, filt)
    return bool(items) and value is not None and math.isclose(float(np.mean(list(items.values()))), value,
                                                              rel_tol=1e-9, abs_tol=1e-9)


PAIRED_TESTS = ("auto", "bootstrap")
ALPHA_LEVEL = 0.05


def paired_stats(base: Sequence[float], edited: Sequence[float], method: str, ci_iters: int, ci_seed: int
                 ) -> dict[str, Any]:
    """delta, ci, p_value, test, mde (and McNemar's discordant counts) of edited - base on the same items.

    ``auto`` (the default): exact McNemar mid-p for 0/1 metrics (:func:`editor.stats.paired_binary`), paired t
    for continuous ones such as margins (:func:`editor.stats.paired_t`); ``bootstrap``: hneurons 0.1's
    percentile paired bootstrap (CI and bootstrap p), with the same MDE as ``auto``."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(edited, dtype=np.float64)
    out: dict[str, Any] = {}
    if stats.is_binary(a) and stats.is_binary(b):
        exact = stats.paired_binary(a, b, ALPHA_LEVEL)
        out = {"test": "mcnemar_mid_p", "ci": list(exact["ci"]), "p_value": exact["p_value"], "mde": exact["mde"],
               "mde_lower_bound": exact["mde_lower_bound"], "discordant": {"better": exact["better"],
                                                                          "worse": exact["worse"]}}
    elif a.size >= 2:
        t = stats.paired_t(a, b)
        out = {"test": "paired_t", "ci": list(t["ci"]), "p_value": t["p_value"], "mde": t["mde"],
               "mde_lower_bound": None, "discordant": None}
    else:
        out = {"test": None, "ci": None, "p_value": None, "mde": None, "mde_lower_bound": None, "discordant": None}
    if method == "bootstrap":
        ci, p = paired_bootstrap(a, b, ci_iters, ci_seed)
        out.update(test="paired_bootstrap", ci=ci, p_value=p)
    elif method != "auto":
        raise InputError(f"paired test {method!r} is not known; expected one of {', '.join(PAIRED_TESTS)}")
    return out


_TEST_NAMES = {"mcnemar_mid_p": "exact McNemar, mid-p (0/1 per item)", "paired_t": "paired t (per-item values)",
               "paired_bootstrap": "paired percentile bootstrap over items"}


def compare_runs(base: LmEvalRun | None, edited: LmEvalRun | None, controls: Sequence[LmEvalRun] = (),
                 control_seeds: Sequence[int] = (), ci_iters: int = 10_000, ci_seed: int = 0,
                 method: str = "auto") -> list[dict[str, Any]]:
    """One row per (task, metric, filter): base, edited, delta with its paired test, CI, n and MDE, the
    controls; then Holm across the rows (``p_holm``, ``significant``) and across the primary rows
    (``p_holm_primary``: the headline family, one declared metric per task)."""
    if method not in PAIRED_TESTS:
        raise InputError(f"paired test {method!r} is not known; expected one of {', '.join(PAIRED_TESTS)}")
    ref = edited or base
    if ref is None:
        raise InputError("nothing to compare: neither a base nor an edited run")
    rows = []
    for task in ref.leaf_tasks():
        primary = ref.primary_metric(task)
        for metric, filt in ref.metric_keys(task):
            if not finite(ref.value(task, metric, filt)):
                continue  # not measured (e.g. a _known metric without known facts): no row
            row = _row(base, edited, controls, control_seeds, task, metric, filt, ci_iters, ci_seed, method)
            row["primary"] = metric == primary
            rows.append(row)
    adjust(rows)
    return rows


def adjust(rows: list[dict[str, Any]]) -> None:
    """Holm over every row with a p-value (``p_holm``; ``significant`` = p_holm <= 0.05) and over the primary
    rows alone (``p_holm_primary``); the edited-vs-control p-values get their own Holm family."""
    for p_key, out_key, sig_key, subset in (
            ("p_value", "p_holm", "significant", None), ("p_value", "p_holm_primary", None, "primary"),
            ("edited_minus_control_p_value", "edited_minus_control_p_holm", "edited_minus_control_significant",
             None)):
        chosen = [r for r in rows if r.get(p_key) is not None and (subset is None or r.get(subset))]
        for r in rows:
            r.setdefault(out_key, None)
        for r, p in zip(chosen, stats.holm([r[p_key] for r in chosen])):
            r[out_key] = p
            if sig_key:
                r[sig_key] = p <= ALPHA_LEVEL


def _row(base, edited, controls, control_seeds, task, metric, filt, ci_iters, ci_seed, method) -> dict[str, Any]:
    ref = edited or base
    row: dict[str, Any] = {
        "task": task, "metric": metric, "filter": filt, "higher_is_better": ref.higher_is_better(task, metric),
        "primary": False, "n": ref.results.get("n-samples", {}).get(task, {}).get("effective"),
        "base": base.value(task, metric, filt) if base else None,
        "edited": edited.value(task, metric, filt) if edited else None,
        "delta": None, "delta_ci95": None, "p_value": None, "p_holm": None, "p_holm_primary": None,
        "significant": None, "significant_unadjusted": None, "ci_method": None, "test": None, "mde": None,
        "mde_lower_bound": None, "discordant": None,
        "control": None, "edited_minus_control": None, "edited_minus_control_ci95": None,
        "edited_minus_control_p_value": None, "edited_minus_control_p_holm": None,
        "edited_minus_control_significant": None, "edited_minus_control_ci_method": None,
    }
    if base is None or edited is None:
        scored = ref.per_item(task, metric, filt)  # a _known metric: only the known facts' items count
        if scored and _is_item_mean(ref, task, metric, filt, scored):
            row["n"] = len(scored)
        return row
    row["delta"] = row["edited"] - row["base"]
    items_base, items_edit = base.per_item(task, metric, filt), edited.per_item(task, metric, filt)
    pairable = _is_item_mean(base, task, metric, filt, items_base) and _is_item_mean(edited, task, metric, filt,
                                                                                      items_edit)
    docs: list[int] = []
    if pairable:
        docs = _paired(items_base, items_edit, f"{task} {metric}")
        row["n"] = len(docs)
        result = paired_stats(np.array([items_base[d] for d in docs]), np.array([items_edit[d] for d in docs]),
                              method, ci_iters, ci_seed)
        ci, p = result["ci"], result["p_value"]
        row.update(delta_ci95=ci, p_value=p, significant_unadjusted=None if p is None else p <= ALPHA_LEVEL,
                   test=result["test"], ci_method=_TEST_NAMES.get(result["test"]) if ci else None, mde=result["mde"],
                   mde_lower_bound=result["mde_lower_bound"], discordant=result["discordant"])
    else:
        row["ci_method"] = "none: the metric is not a mean of per-item values"
    if controls:
        _control_columns(row, controls, control_seeds, task, metric, filt, items_edit if pairable else None, docs,
                         ci_iters, ci_seed, method)
    return row


def _control_columns(row, controls, seeds, task, metric, filt, items_edit, docs, ci_iters, ci_seed, method) -> None:
    values = [c.value(task, metric, filt) for c in controls]
    if any(v is None for v in values):
        return
    row["control"] = spread(values) | {"seeds": {str(s): v for s, v in zip(seeds, values)}}
    row["edited_minus_control"] = row["edited"] - row["control"]["mean"]
    if items_edit is None:
        return
    per_control = [c.per_item(task, metric, filt) for c in controls]
    if any(p is None for p in per_control):
        return
    for i, p in enumerate(per_control):
        _paired(items_edit, p, f"{task} {metric} control {seeds[i] if i < len(seeds) else i}")
    edited = np.array([items_edit[d] for d in docs])
    matrix = np.array([[p[d] for d in docs] for p in per_control])
    if method == "bootstrap":
        ci, p_value = paired_bootstrap(matrix.mean(axis=0), edited, ci_iters, ci_seed + 1)
        how = "paired bootstrap over items against the mean control (no between-set variance)"
    elif len(docs) >= 2:
        result = stats.minus_control_sets(edited, matrix)
        ci, p_value = list(result["ci"]), result["p_value"]
        how = ("t, item variance + between-set variance / sets (sets - 1 df)" if len(controls) > 1
               else "t, item variance only (one control set: between-set variance not estimable)")
    else:
        return
    row["edited_minus_control_ci95"] = ci
    row["edited_minus_control_p_value"] = p_value
    row["edited_minus_control_ci_method"] = how
