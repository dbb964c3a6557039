"""The statistics of an eval report, on hand-written lm-eval outputs: McNemar mid-p for 0/1 metrics, paired t
for margins, Holm across the rows and across the declared primary metrics, n and MDE on every row, and
edited-vs-control intervals that carry the between-control-set variance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from editor import stats
from editor.evaluate.compare import compare_runs
from editor.evaluate.lm_eval_run import LmEvalRun
from editor.evaluate.table import render_table


def write_run(folder: Path, tasks: dict[str, dict[str, list[float]]], primary: dict[str, str]) -> LmEvalRun:
    """An lm-eval output folder by hand: per task, per-item values per metric; ``primary`` as task metadata."""
    folder.mkdir(parents=True)
    doc = {"results": {}, "configs": {}, "higher_is_better": {}, "n-samples": {}}
    for task, values in tasks.items():
        n = len(next(iter(values.values())))
        doc["results"][task] = {f"{m},none": float(np.mean(v)) for m, v in values.items()}
        doc["configs"][task] = {"test_split": "test", "metadata": {"primary_metric": primary.get(task)}}
        doc["higher_is_better"][task] = {m: True for m in values}
        doc["n-samples"][task] = {"original": n, "effective": n}
        with open(folder / f"samples_{task}.jsonl", "w") as handle:
            for i in range(n):
                handle.write(json.dumps({"doc_id": i, "filter": "none", **{m: float(v[i]) for m, v in values.items()}})
                             + "\n")
    (folder / "results.json").write_text(json.dumps(doc))
    return LmEvalRun.load(folder.name, folder)


def test_report_rows_use_mcnemar_for_rates_t_for_margins_and_holm(tmp_path):
    rng = np.random.default_rng(3)
    n = 200
    acc_a = rng.integers(0, 2, n).astype(float)
    acc_b = acc_a.copy()
    acc_b[np.flatnonzero(acc_a == 0)[:14]] = 1  # 14 items better
    acc_b[np.flatnonzero(acc_a == 1)[:4]] = 0  # 4 worse
    other_a = rng.integers(0, 2, n).astype(float)
    other_b = other_a.copy()
    other_b[:3] = 1 - other_b[:3]
    margin_a = rng.normal(0, 1, n)
    margin_b = margin_a + 0.2 + rng.normal(0, 1, n)
    base = write_run(tmp_path / "base", {"mc": {"acc": acc_a, "margin": margin_a}, "gen": {"rate": other_a}},
                     primary={"mc": "margin", "gen": "rate"})
    edited = write_run(tmp_path / "edited", {"mc": {"acc": acc_b, "margin": margin_b}, "gen": {"rate": other_b}},
                       primary={"mc": "margin", "gen": "rate"})
    rows = {(r["task"], r["metric"]): r for r in compare_runs(base, edited)}

    acc = rows[("mc", "acc")]
    assert acc["test"] == "mcnemar_mid_p" and acc["discordant"] == {"better": 14, "worse": 4}
    # mid-p by hand: 2 P(X <= 4) - P(X = 4), X ~ Binomial(18, 1/2)
    by_hand = (2 * sum(math.comb(18, k) for k in range(5)) - math.comb(18, 4)) / 2 ** 18
    assert acc["p_value"] == pytest.approx(by_hand, rel=1e-9)
    assert acc["delta"] == pytest.approx(10 / n) and acc["n"] == n
    lo, hi = acc["delta_ci95"]
    assert 0 < lo < 10 / n < hi < 18 / n  # p < 0.05 and the interval agrees; at most all 18 changes one way
    assert acc["mde"] == pytest.approx(stats.mcnemar_mde(n, 18 / n, mid_p=True))
    assert acc["mde_lower_bound"] == pytest.approx(stats.mcnemar_mde(n, mid_p=True)) and acc["mde_lower_bound"] <= acc["mde"]

    margin = rows[("mc", "margin")]
    reference = scipy_stats.ttest_rel(margin_b, margin_a)
    assert margin["test"] == "paired_t" and margin["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert margin["mde"] == pytest.approx(stats.paired_t(margin_a, margin_b)["mde"]) and margin["mde_lower_bound"] is None

    # Holm across every row, and across the primary rows (one per task) as the headline family.
    ordered = list(rows.values())
    assert [r["p_holm"] for r in ordered] == pytest.approx(stats.holm([r["p_value"] for r in ordered]))
    assert [r["significant"] for r in ordered] == [r["p_holm"] <= 0.05 for r in ordered]
    assert [r["primary"] for r in ordered] == [True, False, True]  # gen:rate, mc:acc, mc:margin (tasks sorted)
    primaries = [r for r in ordered if r["primary"]]
    assert [r["p_holm_primary"] for r in primaries] == pytest.approx(stats.holm([r["p_value"] for r in primaries]))
    assert acc["p_holm_primary"] is None
    assert all(r["n"] == n and r["mde"] is not None for r in ordered)  # n and MDE on every row

    text = render_table({"metrics": ordered, "kl": None})
    assert "* margin" in text and "MDE" in text and "p Holm" in text


def test_edited_minus_control_interval_includes_between_set_variance(tmp_path):
    rng = np.random.default_rng(5)
    n, k = 300, 3
    base_m = rng.normal(0, 1, n)
    edited_m = base_m + 0.3 + rng.normal(0, 0.3, n)
    shifts = [0.0, 0.25, 0.5]  # the control sets disagree with each other
    controls_m = [base_m + s + rng.normal(0, 0.3, n) for s in shifts]
    base = write_run(tmp_path / "base", {"t": {"margin": base_m}}, {})
    edited = write_run(tmp_path / "edited", {"t": {"margin": edited_m}}, {})
    controls = [write_run(tmp_path / f"c{i}", {"t": {"margin": c}}, {}) for i, c in enumerate(controls_m)]
    row = compare_runs(base, edited, controls, [0, 1, 2])[0]
    d = edited_m - np.mean(controls_m, axis=0)
    se_items = d.std(ddof=1) / math.sqrt(n)
    se_sets = np.std([c.mean() for c in controls_m], ddof=1) / math.sqrt(k)
    half = (row["edited_minus_control_ci95"][1] - row["edited_minus_control_ci95"][0]) / 2
    assert half > 1.96 * math.hypot(se_items, se_sets) > 4 * 1.96 * se_items  # the sets dominate, t-quantile wider
    result = stats.minus_control_sets(edited_m, np.array(controls_m))
    assert result["se_between_sets"] == pytest.approx(se_sets) and result["se_items"] == pytest.approx(se_items)
    assert row["edited_minus_control_ci95"] == pytest.approx(list(result["ci"]))
    assert row["edited_minus_control_significant"] is False  # 0.3 - 0.25 with sets spread by 0.25: not resolved
    # One control set: the item variance only, and said so.
    one = compare_runs(base, edited, controls[:1], [0])[0]
    assert "one control set" in one["edited_minus_control_ci_method"]


def test_minus_control_sets_is_calibrated_when_the_edit_is_a_random_set():
    """The null: the edited set's true effect equals the random sets' population mean; rejected ~5% at most."""
    rng = np.random.default_rng(11)
    rejected = 0
    for _ in range(300):
        items = rng.normal(0, 1, 100)
        set_effects = rng.normal(0, 0.2, 4)
        edited = items + 0.0 + rng.normal(0, 0.5, 100)  # the population mean effect (0)
        controls = np.array([items + e + rng.normal(0, 0.5, 100) for e in set_effects])
        result = stats.minus_control_sets(edited, controls)
        rejected += result["p_value"] <= 0.05
    assert rejected / 300 <= 0.07


def test_a_known_facts_metric_reports_the_known_items_as_its_n(tmp_path):
    """A ``_known`` twin is NaN off the known facts: its n is the known items', in a one-model report too."""
    acc = [1.0, 0.0, 1.0, 0.0, 1.0]
    known = [1.0, float("nan"), 1.0, float("nan"), float("nan")]
    doc_values = {"mc": {"acc": acc, "acc_known": known}}
    run = write_run(tmp_path / "base", doc_values, primary={"mc": "acc_known"})
    # lm-eval's aggregate of a _known metric is the mean over the known items (NaN left out)
    results = json.loads((tmp_path / "base" / "results.json").read_text())
    results["results"]["mc"]["acc_known,none"] = 1.0
    (tmp_path / "base" / "results.json").write_text(json.dumps(results))
    run = LmEvalRun.load("base", tmp_path / "base")
    rows = {r["metric"]: r for r in compare_runs(run, None)}
    assert rows["acc"]["n"] == 5 and rows["acc_known"]["n"] == 2
