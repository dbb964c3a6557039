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


def compare_runs(base: LmEvalRun | None, edited: LmEvalRun | None, controls: Sequence[LmEvalRun] = (),
                 control_seeds: Sequence[int] = (), ci_iters: int = 10_000, ci_seed: int = 0) -> list[dict[str, Any]]:
    """One row per (task, metric, filter): base, edited, delta with a paired-bootstrap CI, and the controls."""
    ref = edited or base
    if ref is None:
        raise InputError("nothing to compare: neither a base nor an edited run")
    rows = []
    for task in ref.leaf_tasks():
        for metric, filt in ref.metric_keys(task):
            if not finite(ref.value(task, metric, filt)):
                continue  # not measured (e.g. a _known metric without known facts): no row
            rows.append(_row(base, edited, controls, control_seeds, task, metric, filt, ci_iters, ci_seed))
    return rows


def _row(base, edited, controls, control_seeds, task, metric, filt, ci_iters, ci_seed) -> dict[str, Any]:
    ref = edited or base
    row: dict[str, Any] = {
        "task": task, "metric": metric, "filter": filt, "higher_is_better": ref.higher_is_better(task, metric),
        "n": ref.results.get("n-samples", {}).get(task, {}).get("effective"),
        "base": base.value(task, metric, filt) if base else None,
        "edited": edited.value(task, metric, filt) if edited else None,
        "delta": None, "delta_ci95": None, "p_value": None, "significant": None, "ci_method": None,
        "control": None, "edited_minus_control": None, "edited_minus_control_ci95": None,
        "edited_minus_control_significant": None,
    }
    if base is None or edited is None:
        return row
    row["delta"] = row["edited"] - row["base"]
    items_base, items_edit = base.per_item(task, metric, filt), edited.per_item(task, metric, filt)
    pairable = _is_item_mean(base, task, metric, filt, items_base) and _is_item_mean(edited, task, metric, filt,
                                                                                      items_edit)
    docs: list[int] = []
    if pairable:
        docs = _paired(items_base, items_edit, f"{task} {metric}")
        row["n"] = len(docs)
        ci, p = paired_bootstrap(np.array([items_base[d] for d in docs]), np.array([items_edit[d] for d in docs]),
                                 ci_iters, ci_seed)
        row.update(delta_ci95=ci, p_value=p, significant=None if ci is None else not (ci[0] <= 0 <= ci[1]),
                   ci_method="paired bootstrap over items" if ci else None)
    else:
        row["ci_method"] = "none: the metric is not a mean of per-item values"
    if controls:
        _control_columns(row, controls, control_seeds, task, metric, filt, items_edit if pairable else None, docs,
                         ci_iters, ci_seed)
    return row


def _control_columns(row, controls, seeds, task, metric, filt, items_edit, docs, ci_iters, ci_seed) -> None:
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
    control_mean = np.array([np.mean([p[d] for p in per_control]) for d in docs])
    ci, _ = paired_bootstrap(control_mean, np.array([items_edit[d] for d in docs]), ci_iters, ci_seed + 1)
    row["edited_minus_control_ci95"] = ci
    row["edited_minus_control_significant"] = None if ci is None else not (ci[0] <= 0 <= ci[1])
