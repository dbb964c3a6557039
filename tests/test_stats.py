"""Statistics helpers: AUROC, accuracy, bootstrap CIs (coverage), paired bootstrap, thresholds, rank test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from editor.errors import InputError
from editor.stats import accuracy, auroc, best_threshold, bootstrap_ci, one_sided_rank_test, paired_bootstrap_delta


def test_auroc_matches_sklearn_with_and_without_ties():
    rng = np.random.default_rng(0)
    for decimals in (None, 1, 0):
        scores = rng.standard_normal(500)
        if decimals is not None:
            scores = np.round(scores, decimals)  # heavy ties between the classes
        labels = rng.random(500) < 0.3
        assert math.isclose(auroc(scores, labels), roc_auc_score(labels, scores), abs_tol=1e-12)
        rows = rng.integers(0, 500, size=(20, 500))
        batched = auroc(scores[rows], labels[rows])
        assert np.allclose(batched, [roc_auc_score(labels[r], scores[r]) for r in rows], atol=1e-12)
    assert auroc([0.1, 0.9], [-1, 1]) == 1.0
    assert auroc([3, 3, 3, 3], [0, 1, 0, 1]) == 0.5
    with pytest.raises(InputError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


def test_accuracy():
    assert accuracy(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])) == 0.75
    assert np.allclose(accuracy(np.array([[1, 0], [0, 0]]), np.array([[1, 0], [1, 1]])), [1.0, 0.0])
    with pytest.raises(InputError):
        accuracy([1, 0], [1])


def test_bootstrap_ci_covers_the_true_auroc():
    rng = np.random.default_rng(1)
    shift = 1.0
    true_auc = 0.5 * math.erfc(-shift / 2)  # P(N(shift, 1) > N(0, 1)) = Phi(shift / sqrt 2)
    covered = 0
    for trial in range(200):
        labels = np.r_[np.ones(100, bool), np.zeros(100, bool)]
        scores = rng.standard_normal(200) + shift * labels
        lo, hi = bootstrap_ci(auroc, scores, labels, n_boot=400, seed=trial, stratify=labels)
        assert lo <= auroc(scores, labels) <= hi
        covered += lo <= true_auc <= hi
    assert 0.88 <= covered / 200 <= 0.99, covered


def test_bootstrap_ci_batched_equals_one_call_per_resample():
    rng = np.random.default_rng(2)
    pred, labels = rng.random(300) < 0.5, rng.random(300) < 0.5
    batched = bootstrap_ci(accuracy, pred, labels, n_boot=200, seed=5)
    looped = bootstrap_ci(accuracy, pred, labels, n_boot=200, seed=5, batched=False)
    assert batched == looped
    assert batched[0] < accuracy(pred, labels) < batched[1]
    with pytest.raises(InputError, match="batched=False"):
        bootstrap_ci(lambda p, q: float(np.mean(p == q)), pred, labels, n_boot=10)


def test_stratified_bootstrap_keeps_both_classes():
    labels = np.r_[np.ones(3, bool), np.zeros(97, bool)]
    scores = np.linspace(0, 1, 100)
    lo, hi = bootstrap_ci(auroc, scores, labels, n_boot=300, stratify=labels)
    assert 0 <= lo <= hi <= 1


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(3)
    base = (rng.random(1000) < 0.5).astype(float)
    edited = base.copy()
    flip = np.flatnonzero(base == 0)[:120]  # 120 items get fixed, none broken
    edited[flip] = 1
    result = paired_bootstrap_delta(base, edited)
    assert result["significant"] and result["p_value"] < 0.01
    assert math.isclose(result["delta"], 0.12) and result["ci"][0] > 0.08
    # null: as many items fixed as broken
    null = base.copy()
    ones, zeros = np.flatnonzero(base == 1)[:60], np.flatnonzero(base == 0)[:60]
    null[ones], null[zeros] = 0, 1
    result = paired_bootstrap_delta(base, null)
    assert result["delta"] == 0 and not result["significant"] and result["p_value"] > 0.5
    assert result["ci"][0] < 0 < result["ci"][1]


def test_best_threshold_is_chosen_on_validation_and_applied():
    val_scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    val_labels = np.array([0, 0, 0, 1, 1, 1])
    threshold = best_threshold(val_scores, val_labels)
    assert 0.3 < threshold < 0.6
    assert accuracy(val_scores >= threshold, val_labels == 1) == 1.0
    # all positive / all negative are candidates too
    assert best_threshold([0.5, 0.6, 0.7], [1, 1, 1]) < 0.5
    assert best_threshold([0.5, 0.6, 0.7], [0, 0, 0]) > 0.7
    # noisy scores: the chosen threshold attains the best accuracy over all cut points
    rng = np.random.default_rng(4)
    labels = rng.random(400) < 0.4
    scores = rng.standard_normal(400) + labels
    t = best_threshold(scores, labels)
    best = max(accuracy(scores >= c, labels) for c in np.r_[scores, scores.max() + 1])
    assert math.isclose(accuracy(scores >= t, labels), best)


def test_rank_test_is_calibrated_and_exact():
    rng = np.random.default_rng(5)
    # under the null (uniform ranks) p-values are uniform
    pvals = np.array([one_sided_rank_test(rng.random(30)) for _ in range(400)])
    assert 0.02 <= np.mean(pvals < 0.05) <= 0.09
    # H-Neurons that drift less than average (ranks 0.58-0.97 in the paper) give a small p-value
    assert one_sided_rank_test(rng.uniform(0.4, 1.0, 50)) < 1e-3
    assert one_sided_rank_test(rng.uniform(0.4, 1.0, 50), alternative="less") > 0.99
    # exact Irwin-Hall tail vs Monte Carlo, and continuity with the normal approximation at k = 100
    sims = rng.random((200_000, 5)).mean(axis=1)
    assert abs(one_sided_rank_test(np.full(5, 0.7)) - np.mean(sims >= 0.7)) < 0.003
    assert abs(one_sided_rank_test(np.full(100, 0.55)) - one_sided_rank_test(np.full(101, 0.55))) < 0.005
    assert one_sided_rank_test(np.full(4, 1.0)) == 0.0
    wilcoxon_p = one_sided_rank_test(rng.uniform(0.5, 1.0, 40), method="wilcoxon")
    assert wilcoxon_p < 1e-3
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        one_sided_rank_test([0.2, 1.5])
    with pytest.raises(InputError, match="wilcoxon"):
        one_sided_rank_test([0.2, 0.5], null=0.4)


# ------------------------------------------------------------------ paired binary outcomes (dose-response)
def test_mcnemar_exact_and_mid_p_match_hand_computed_binomial_tails():
    from editor.stats import mcnemar

    assert mcnemar(4, 0) == pytest.approx(0.125)  # 2 * (1/2)^4
    assert mcnemar(4, 0, mid_p=True) == pytest.approx(0.0625)
    assert mcnemar(1, 5) == pytest.approx(14 / 64) == mcnemar(5, 1)  # 2 * (1 + 6) / 2^6, symmetric
    assert mcnemar(2, 8) == pytest.approx(112 / 1024)  # 2 * (1 + 10 + 45) / 2^10
    assert mcnemar(2, 8, mid_p=True) == pytest.approx(67 / 1024)  # minus P(X = 2) once
    assert mcnemar(3, 3) == 1.0 and mcnemar(0, 0) == 1.0
    assert mcnemar(700, 800) < 0.02  # large n stays finite (no 2^n overflow)
    with pytest.raises(InputError, match="counts >= 0"):
        mcnemar(-1, 3)


def test_holm_adjusts_in_input_order_and_stays_monotone():
    from editor.stats import holm

    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    with pytest.raises(InputError, match="p-values in"):
        holm([0.2, float("nan")])


def test_mcnemar_mde_is_the_change_detected_with_80_percent_power():
    from scipy.stats import binom

    from editor.stats import mcnemar_mde

    # every changed item moves one way: the exact test at 0.05 needs 6 of them (2 / 2^6 < 0.05 < 2 / 2^5),
    # so the MDE is the change rate d with P(Binomial(n, d) >= 6) = 0.8
    for n in (24, 60):
        d = mcnemar_mde(n)
        assert binom.sf(5, n, d) == pytest.approx(0.8, abs=1e-3)
    assert mcnemar_mde(24) == pytest.approx(0.31, abs=0.005)  # the 24-item evaluation: 31 points
    assert mcnemar_mde(60) == pytest.approx(0.13, abs=0.005)
    assert mcnemar_mde(453) < mcnemar_mde(453, discordance=0.1) < 0.05  # changes both ways cost power
    assert mcnemar_mde(5) is None  # 5 of 5 moving one way is p = 0.0625: nothing is detectable
    assert mcnemar_mde(6) is not None


def test_paired_t_matches_scipy():
    from scipy.stats import ttest_rel

    from editor.stats import paired_t

    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + 0.1 + rng.normal(scale=0.5, size=200)
    res = paired_t(a, b)
    ref = ttest_rel(b, a)
    assert res["p_value"] == pytest.approx(ref.pvalue)
    assert res["delta"] == pytest.approx(float((b - a).mean()))
    lo, hi = ref.confidence_interval(0.95)
    assert res["ci"] == pytest.approx((lo, hi))
    assert res["n"] == 200 and 0 < res["mde"] < 0.2
    with pytest.raises(InputError, match="same length"):
        paired_t([1.0, 2.0], [1.0])
