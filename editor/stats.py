"""Statistics for the locate, evaluate and origin stages: AUROC, accuracy, bootstrap confidence intervals,
paired bootstrap tests, validation thresholds and the origin rank test. numpy only.

Metric functions accept 1-D arrays (one value) or 2-D arrays (one value per row): the bootstrap passes
all resamples at once as a [n_boot, n] array, so 1,000 resamples of 1,000 items take a few tens of
milliseconds instead of 1,000 Python calls.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Callable

import numpy as np

from .errors import InputError

__all__ = [
    "auroc",
    "accuracy",
    "bootstrap_ci",
    "paired_bootstrap_delta",
    "best_threshold",
    "one_sided_rank_test",
]

_CHUNK_ELEMENTS = 1 << 22  # resampled elements materialised at once by the bootstrap


def _binary(labels, name: str = "labels") -> np.ndarray:
    """Boolean view of 0/1, -1/+1 or bool labels (True = positive)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels
    positive = labels > 0
    if not ((positive | (labels == 0)).all() or (positive | (labels == -1)).all()):
        raise InputError(f"{name} must be binary (0/1, -1/+1 or bool); found {np.unique(labels)[:6].tolist()}")
    return positive


# -------------------------------------------------------------------------------------------- metrics
def auroc(scores, labels) -> float | np.ndarray:
    """Area under the ROC curve = the Mann-Whitney U statistic / (n_pos * n_neg); ties count one half.

    1-D input: a float (raises InputError when a class is missing). 2-D input [rows, n]: one AUROC per
    row (NaN for a row with a single class)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = _binary(labels)
    if scores.shape != positive.shape or scores.ndim not in (1, 2):
        raise InputError(
            f"auroc needs scores and labels of the same 1-D or 2-D shape; got {scores.shape} and {positive.shape}"
        )
    if not np.isfinite(scores).all():
        raise InputError("auroc: scores contain NaN or inf")
    single = scores.ndim == 1
    scores, positive = np.atleast_2d(scores), np.atleast_2d(positive)
    order = np.argsort(scores, axis=1)
    ranked = np.take_along_axis(scores, order, axis=1)
    is_pos = np.take_along_axis(positive, order, axis=1)
    n_pos = is_pos.sum(axis=1)
    n_neg = scores.shape[1] - n_pos
    tied = ranked[:, 1:] == ranked[:, :-1]
    if (tied & (is_pos[:, 1:] != is_pos[:, :-1])).any():
        u_stat = _u_statistic_with_ties(ranked, is_pos, tied)
    else:
        # No positive is tied with a negative (ties within a class, e.g. bootstrap duplicates, do not matter):
        # U = sum over positives of the negatives sorted before them.
        negatives_before = np.cumsum(~is_pos, axis=1, dtype=np.int64 if scores.shape[1] >= 2**31 else np.int32)
        negatives_before *= is_pos
        u_stat = negatives_before.sum(axis=1, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = u_stat / (n_pos * n_neg)
    value = np.where((n_pos > 0) & (n_neg > 0), value, np.nan)
    if single:
        if math.isnan(value[0]):
            raise InputError("auroc needs both classes among the labels")
        return float(value[0])
    return value


def _u_statistic_with_ties(ranked: np.ndarray, is_pos: np.ndarray, tied: np.ndarray) -> np.ndarray:
    """Mann-Whitney U from average (mid) ranks of tie groups, rows sorted by score."""
    n = ranked.shape[1]
    position = np.broadcast_to(np.arange(n), ranked.shape)
    starts = np.ones(ranked.shape, dtype=bool)
    starts[:, 1:] = ~tied
    ends = np.ones(ranked.shape, dtype=bool)
    ends[:, :-1] = ~tied
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
    mid_rank = (first + last) / 2 + 1  # average 1-based rank of each tie group
    n_pos = is_pos.sum(axis=1)
    return np.where(is_pos, mid_rank, 0).sum(axis=1) - n_pos * (n_pos + 1) / 2


def accuracy(pred, labels) -> float | np.ndarray:
    """Fraction of ``pred == labels`` (1-D: a float; 2-D: one value per row)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim not in (1, 2) or pred.shape[-1] == 0:
        raise InputError(
            f"accuracy needs non-empty predictions and labels of the same shape; got {pred.shape} and {labels.shape}"
        )
    value = (pred == labels).mean(axis=-1)
    return float(value) if pred.ndim == 1 else value


def best_threshold(scores, labels) -> float:
    """The accuracy-maximising threshold on (validation) scores: predict positive iff ``score >= threshold``.

    Candidates are the midpoints between consecutive distinct scores plus one value below the minimum
    (min - 1: all positive) and one above the maximum (max + 1: all negative). Among equally accurate
    thresholds the middle one (in score order) is returned. Choose it on validation and apply it to test;
    never choose it on test."""
    scores = np.asarray(scores, dtype=np.float64).flatten()
    positive = _binary(np.asarray(labels).flatten())
    if scores.size != positive.size or scores.size == 0 or not np.isfinite(scores).all():
        raise InputError("best_threshold needs finite scores and labels of the same non-zero length")
    values, code = np.unique(scores, return_inverse=True)
    pos_at = np.bincount(code[positive], minlength=values.size)
    neg_at = np.bincount(code[~positive], minlength=values.size)
    # threshold i sits just below values[i] (i = 0..U-1) or above the maximum (i = U)
    neg_below = np.concatenate([[0], np.cumsum(neg_at)])
    pos_at_or_above = np.concatenate([np.cumsum(pos_at[::-1])[::-1], [0]])
    correct = neg_below + pos_at_or_above
    best = np.flatnonzero(correct == correct.max())
    i = int(best[len(best) // 2])
    if i == 0:
        return float(values[0] - 1.0)
    if i == values.size:
        return float(values[-1] + 1.0)
    return float((values[i - 1] + values[i]) / 2)


# ------------------------------------------------------------------------------------------ bootstrap
def _resample_index(n: int, n_boot: int, rng: np.random.Generator, stratify) -> np.ndarray:
    """[n_boot, n] row indices; with ``stratify``, each class keeps its size (resampled within itself)."""
    if stratify is None:
        return rng.integers(0, n, size=(n_boot, n))
    groups = np.asarray(stratify).flatten()
    if groups.size != n:
        raise InputError(f"stratify has {groups.size} entries but the arrays have {n} rows")
    parts = []
    for value in np.unique(groups):
        members = np.flatnonzero(groups == value)
        parts.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    return np.concatenate(parts, axis=1)


def _replicates(metric_fn: Callable, arrays: list[np.ndarray], index: np.ndarray, batched: bool) -> np.ndarray:
    if not batched:
        return np.array([metric_fn(*(a[row] for a in arrays)) for row in index], dtype=np.float64)
    out = []
    step = max(1, _CHUNK_ELEMENTS // index.shape[1])
    for start in range(0, index.shape[0], step):
        rows = index[start : start + step]
        values = np.asarray(metric_fn(*(a[rows] for a in arrays)), dtype=np.float64)
        if values.shape != (rows.shape[0],):
            raise InputError(
                f"bootstrap_ci: the metric returned shape {values.shape} for {rows.shape[0]} stacked resamples; "
                "give a metric that accepts 2-D [resamples, n] arrays, or pass batched=False"
            )
        out.append(values)
    return np.concatenate(out)


def bootstrap_ci(
    metric_fn: Callable,
    *arrays,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratify=None,
    batched: bool = True,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``metric_fn(*arrays)``, resampling rows of all arrays jointly.

    ``stratify`` (e.g. the labels, for AUROC) resamples within each class so every resample keeps both
    classes. ``batched`` (default) calls ``metric_fn`` once per chunk of stacked [n_boot, n] resamples
    (:func:`auroc` and :func:`accuracy` accept that); ``batched=False`` calls it once per resample.
    Replicates that are NaN (e.g. a non-stratified AUROC resample with one class) are dropped; more than
    half NaN raises InputError."""
    if not arrays:
        raise InputError("bootstrap_ci needs at least one array")
    arrays = [np.asarray(a) for a in arrays]
    n = arrays[0].shape[0]
    if n == 0 or any(a.shape[0] != n for a in arrays):
        raise InputError(f"bootstrap_ci needs non-empty arrays with the same number of rows; got {[a.shape for a in arrays]}")
    if not 0 < alpha < 1 or n_boot < 1:
        raise InputError(f"bootstrap_ci needs 0 < alpha < 1 and n_boot >= 1; got alpha={alpha}, n_boot={n_boot}")
    rng = np.random.default_rng(seed)
    values = _replicates(metric_fn, arrays, _resample_index(n, n_boot, rng, stratify), batched)
    finite = values[np.isfinite(values)]
    if finite.size < n_boot / 2:
        raise InputError(
            f"bootstrap_ci: {n_boot - finite.size} of {n_boot} resamples gave NaN (a class missing?); "
            "pass stratify=labels"
        )
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _mean_rows(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=-1)


def paired_bootstrap_delta(a, b, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired bootstrap of ``delta = mean(b) - mean(a)`` for per-item values of the same items (e.g. base
    vs edited correctness), resampling items jointly.

    Returns ``delta``, ``ci`` (percentile, level 1 - alpha), ``p_value`` (two-sided bootstrap p:
    2 * the smaller fraction of resampled deltas on either side of 0, with the +1 correction),
    ``significant`` (the CI excludes 0), ``mean_a``, ``mean_b``, ``n``."""
    a, b = np.asarray(a, dtype=np.float64).flatten(), np.asarray(b, dtype=np.float64).flatten()
    if a.size != b.size or a.size == 0:
        raise InputError(f"paired_bootstrap_delta needs two non-empty arrays of the same length; got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("paired_bootstrap_delta: values contain NaN or inf")
    diff = b - a
    rng = np.random.default_rng(seed)
    deltas = _replicates(_mean_rows, [diff], _resample_index(diff.size, n_boot, rng, None), True)
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    below = (np.count_nonzero(deltas <= 0) + 1) / (n_boot + 1)
    above = (np.count_nonzero(deltas >= 0) + 1) / (n_boot + 1)
    return {
        "delta": float(diff.mean()),
        "ci": (float(lo), float(hi)),
        "p_value": float(min(1.0, 2 * min(below, above))),
        "significant": bool(lo > 0 or hi < 0),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "n": int(a.size),
    }


# -------------------------------------------------------------------------------------- origin test
_EXACT_MAX_K = 100


def _irwin_hall_sf(total: float, k: int) -> float:
    """P(U_1 + ... + U_k >= total) for iid Uniform(0, 1), exactly (rational arithmetic: the alternating
    Irwin-Hall sum cancels catastrophically in floating point)."""
    x = Fraction(k) - Fraction(total)  # by symmetry P(S >= total) = P(S <= k - total)
    if x <= 0:
        return 0.0
    if x >= k:
        return 1.0
    cdf = sum((-1) ** j * math.comb(k, j) * (x - j) ** k for j in range(int(x) + 1)) / math.factorial(k)
    return float(min(max(cdf, 0), 1))


def one_sided_rank_test(ranks_normalised, null: float = 0.5, alternative: str = "greater", method: str = "uniform") -> float:
    """One-sided p-value for "the H-Neurons' mean normalised rank exceeds (or falls below) ``null``".

    method "uniform" (default): under the null the normalised ranks of a random neuron set are iid
    Uniform(0, 1), so the sum of k ranks follows the Irwin-Hall distribution: exact tail for k <= 100,
    normal approximation (mean k/2, variance k/12) beyond. Only ``null = 0.5`` makes sense here. Ranks of
    distinct neurons are drawn without replacement, which only shrinks the variance: the test is
    (slightly) conservative. method "wilcoxon": the Wilcoxon signed-rank test of ``ranks - null``
    (scipy), valid for any symmetric null around ``null``."""
    ranks = np.asarray(ranks_normalised, dtype=np.float64).flatten()
    if ranks.size == 0 or not np.isfinite(ranks).all() or ranks.min() < 0 or ranks.max() > 1:
        raise InputError("one_sided_rank_test needs a non-empty array of normalised ranks in [0, 1]")
    if alternative not in ("greater", "less"):
        raise InputError(f"alternative must be 'greater' or 'less'; got {alternative!r}")
    if method == "wilcoxon":
        from scipy.stats import wilcoxon

        return float(wilcoxon(ranks - null, alternative=alternative).pvalue)
    if method != "uniform":
        raise InputError(f"method must be 'uniform' or 'wilcoxon'; got {method!r}")
    if null != 0.5:
        raise InputError("the 'uniform' rank test has null 0.5 (uniform ranks); use method='wilcoxon' for another null")
    k = ranks.size
    total = float(ranks.sum()) if alternative == "greater" else float(k - ranks.sum())  # 1 - U is uniform too
    if k <= _EXACT_MAX_K:
        return _irwin_hall_sf(total, k)
    z = (total - k / 2) / math.sqrt(k / 12)
    return float(0.5 * math.erfc(z / math.sqrt(2)))


# ------------------------------------------------------------------------------------- agreement
def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two labellings of the same items: (p_observed - p_chance) / (1 - p_chance), with
    chance agreement from each labelling's own label frequencies. 1 when both agree on one label only."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise InputError(f"cohen_kappa needs two non-empty labellings of the same items; got {len(a)} and {len(b)}")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    labels = set(a) | set(b)
    chance = sum((a.count(label) / n) * (b.count(label) / n) for label in labels)
    return 1.0 if chance == 1 else (observed - chance) / (1 - chance)


# ------------------------------------------------------------------------------ paired binary outcomes
def mcnemar(better: int, worse: int, mid_p: bool = False) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes: ``better`` items went 0 -> 1 and
    ``worse`` went 1 -> 0 (the concordant items carry no information). Under the null each discordant item
    moves either way with probability 1/2; the exact p doubles the smaller binomial tail (capped at 1), the
    mid-p counts the observed value once at half weight (less conservative, close to nominal size).
    4-0: exact 0.125, mid-p 0.0625."""
    from scipy.stats import binom

    if better < 0 or worse < 0:
        raise InputError(f"mcnemar needs counts >= 0; got {better} and {worse}")
    n, k = better + worse, min(better, worse)
    if n == 0:
        return 1.0
    p = 2 * float(binom.cdf(k, n, 0.5)) - (float(binom.pmf(k, n, 0.5)) if mid_p else 0.0)
    return float(min(1.0, p))


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(p_values, dtype=np.float64).flatten()
    if p.size == 0:
        return []
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise InputError(f"holm needs p-values in [0, 1]; got {p.tolist()[:6]}")
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


@functools.lru_cache(maxsize=64)
def _mcnemar_critical(n: int, level: float, mid_p: bool) -> np.ndarray:
    """For m = 0..n discordant items: the largest count k of the smaller side that the two-sided test
    rejects at ``level`` (-1: none); the test rejects k <= k_crit or k >= m - k_crit."""
    from scipy.stats import binom

    critical = np.full(n + 1, -1)
    for m in range(1, n + 1):
        k = np.arange(m // 2 + 1)
        p = 2 * binom.cdf(k, m, 0.5) - (binom.pmf(k, m, 0.5) if mid_p else 0.0)
        critical[m] = int((p <= level * (1 + 1e-12)).sum()) - 1  # p grows with k: the rejected ks come first
    return critical


def _mcnemar_power(n: int, delta: float, discordance: float, level: float, mid_p: bool) -> float:
    """Power of the two-sided McNemar test at ``level`` for n items when a fraction ``discordance`` of them
    changes and the net change is ``delta`` (items going one way minus the other, as a fraction of n)."""
    from scipy.stats import binom

    d = max(discordance, delta)
    if d <= 0:
        return 0.0
    q = (d + delta) / (2 * d)  # P(a changed item moved the way of the effect)
    m = np.arange(n + 1)
    k = _mcnemar_critical(n, level, mid_p)
    reject = np.where(k >= 0, binom.cdf(k, m, q) + binom.sf(m - k - 1, m, q), 0.0)
    return float((binom.pmf(m, n, d) * reject).sum())


def mcnemar_mde(n: int, discordance: float = 0.0, power: float = 0.8, level: float = 0.05,
                mid_p: bool = False) -> float | None:
    """The minimum detectable change (a fraction of n) of a paired binary metric over n items: the smallest
    net change that the two-sided McNemar test at ``level`` detects with probability ``power``.

    ``discordance`` is the fraction of items that change either way (for example the one observed); the
    default 0 assumes every changed item moves the same way, the most favourable case, so the result is a
    lower bound. None when even a change of every item is not detected (tiny n)."""
    if n < 1:
        raise InputError(f"mcnemar_mde needs n >= 1; got {n}")
    lo, hi = 0.0, 1.0
    if _mcnemar_power(n, hi, discordance, level, mid_p) < power:
        return None
    for _ in range(30):  # bisection on the net change: the power grows with it
        mid = (lo + hi) / 2
        if _mcnemar_power(n, mid, discordance, level, mid_p) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def paired_t(a, b) -> dict:
    """Paired t-test of ``mean(b) - mean(a)`` (e.g. per-item log-probability margins, base vs edited):
    ``delta``, ``ci`` (95%, t), ``p_value`` (two-sided), ``n``, ``sd`` of the differences and ``mde`` (the
    change detectable with 80% power at 0.05: (t_0.975 + t_0.8) * sd / sqrt(n))."""
    from scipy.stats import t as student

    a, b = np.asarray(a, dtype=np.float64).flatten(), np.asarray(b, dtype=np.float64).flatten()
    if a.size != b.size or a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError(f"paired_t needs two finite arrays of the same length >= 2; got {a.size} and {b.size}")
    diff = b - a
    n, sd = diff.size, float(diff.std(ddof=1))
    se = sd / math.sqrt(n)
    delta = float(diff.mean())
    q = float(student.ppf(0.975, n - 1))
    p = 1.0 if se == 0 and delta == 0 else (0.0 if se == 0 else float(2 * student.sf(abs(delta) / se, n - 1)))
    mde = (q + float(student.ppf(0.8, n - 1))) * se
    return {"delta": delta, "ci": (delta - q * se, delta + q * se), "p_value": p, "n": n, "sd": sd, "mde": mde}


# ------------------------------------------------------------------------------- paired comparisons of runs
def mcnemar_ci(better: int, worse: int, n: int, level: float = 0.05, mid_p: bool = True) -> tuple[float, float]:
    """CI of the paired change (better - worse) / n of a binary metric, conditional on the m = better + worse
    discordant items: better ~ Binomial(m, q), change = m / n * (2q - 1), q's interval by inverting the same
    (mid-p by default, else exact Clopper-Pearson) binomial tails the McNemar test uses, so the interval excludes
    0 exactly when :func:`mcnemar` rejects at ``level`` (up to the tails' discreteness). m = 0: [0, 0]."""
    from scipy.optimize import brentq
    from scipy.stats import binom

    if better < 0 or worse < 0 or n < better + worse or n < 1:
        raise InputError(f"mcnemar_ci needs 0 <= better + worse <= n and n >= 1; got {better}, {worse}, {n}")
    m = better + worse
    if m == 0:
        return 0.0, 0.0
    half = 0.5 if mid_p else 1.0

    def upper_tail(q):  # P(X > better) + half * P(X = better): grows with q
        return float(binom.sf(better, m, q) + half * binom.pmf(better, m, q))

    def lower_tail(q):  # P(X < better) + half * P(X = better): falls with q
        return float(binom.cdf(better - 1, m, q) + half * binom.pmf(better, m, q))

    a = level / 2
    lo = 0.0 if better == 0 else brentq(lambda q: upper_tail(q) - a, 1e-12, 1 - 1e-12)
    hi = 1.0 if better == m else brentq(lambda q: lower_tail(q) - a, 1e-12, 1 - 1e-12)
    return m / n * (2 * lo - 1), m / n * (2 * hi - 1)


def paired_binary(a, b, level: float = 0.05, power: float = 0.8) -> dict:
    """Paired 0/1 outcomes of the same items (``a`` before, ``b`` after): the change mean(b) - mean(a), its
    mid-p McNemar CI (:func:`mcnemar_ci`) and two-sided mid-p p-value (:func:`mcnemar`), the discordant counts,
    ``mde`` (the net change the test detects with ``power`` at the observed discordance) and
    ``mde_lower_bound`` (the same when every changed item moves one way: no test on n items can do better)."""
    a, b = np.asarray(a, dtype=np.float64).flatten(), np.asarray(b, dtype=np.float64).flatten()
    if a.size != b.size or a.size == 0 or not np.isin(a, (0.0, 1.0)).all() or not np.isin(b, (0.0, 1.0)).all():
        raise InputError(f"paired_binary needs two 0/1 arrays of the same non-zero length; got {a.size} and {b.size}")
    n = int(a.size)
    better, worse = int(((a == 0) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())
    discordance = (better + worse) / n
    return {"delta": float(b.mean() - a.mean()), "ci": mcnemar_ci(better, worse, n, level, mid_p=True),
            "p_value": mcnemar(better, worse, mid_p=True), "n": n, "better": better, "worse": worse,
            "mde": mcnemar_mde(n, discordance, power, level, mid_p=True),
            "mde_lower_bound": mcnemar_mde(n, 0.0, power, level, mid_p=True)}


def is_binary(values) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(values.size) and bool(np.isin(values, (0.0, 1.0)).all())


def paired_change(a, b, level: float = 0.05) -> dict:
    """The paired test hneurons uses for a change of a per-item metric: :func:`paired_binary` (mid-p McNemar)
    when both arrays are 0/1, else :func:`paired_t` (margins and other continuous values). Adds ``test``."""
    if is_binary(a) and is_binary(b):
        return paired_binary(a, b, level) | {"test": "mcnemar_mid_p"}
    if np.asarray(a).size < 2:
        raise InputError("a paired t-test needs at least 2 items")
    return paired_t(a, b) | {"test": "paired_t"}


def minus_control_sets(edited, controls) -> dict:
    """``edited`` - the mean of k random control sets, per item (``edited`` [n], ``controls`` [k, n], the same
    items), with a 95% CI whose variance adds the between-set variance to the item variance:

        d_i = edited_i - mean_s control_s,i;   se^2 = var(d) / n + var_s(mean_i control_s,i) / k

    and a t quantile with k - 1 degrees of freedom (the between-set variance rests on k sets). The estimand is
    the difference from the *population* of random sets (not only from the k drawn), so a few sets that happen
    to agree cannot make it look precise. Welch-Satterthwaite df would be tighter but is liberal when the sets
    differ (6.6% rejections at a nominal 5% in the simulations of tests/test_dose.py with 3 sets); k - 1 keeps
    the size at or below 5% there. The estimate also counts the sets' item noise twice (in var(d) and in the
    set means), which is conservative. With k = 1 the between-set variance cannot be estimated:
    ``se_between_sets`` is None, the CI holds the item variance only (t with n - 1 df) and ``note`` says so."""
    from scipy.stats import t as student

    e = np.asarray(edited, dtype=np.float64).flatten()
    c = np.atleast_2d(np.asarray(controls, dtype=np.float64))
    if c.shape[1] != e.size or e.size < 2 or not (np.isfinite(e).all() and np.isfinite(c).all()):
        raise InputError(f"minus_control_sets needs edited [n >= 2] and controls [k, n] of finite values; got "
                         f"{e.shape} and {c.shape}")
    n, k = e.size, c.shape[0]
    d = e - c.mean(axis=0)
    v_items = float(d.var(ddof=1)) / n
    v_sets = float(c.mean(axis=1).var(ddof=1)) / k if k > 1 else None
    var = v_items + (v_sets or 0.0)
    delta = float(d.mean())
    if var == 0:
        return {"delta": delta, "ci": (delta, delta), "p_value": 1.0 if delta == 0 else 0.0, "n": n, "sets": k,
                "se_items": 0.0, "se_between_sets": 0.0 if k > 1 else None, "df": None,
                "note": None if k > 1 else "one control set: between-set variance not estimable"}
    df = k - 1 if v_sets is not None else n - 1
    se = math.sqrt(var)
    q = float(student.ppf(0.975, df))
    return {"delta": delta, "ci": (delta - q * se, delta + q * se),
            "p_value": float(2 * student.sf(abs(delta) / se, df)), "n": n, "sets": k,
            "se_items": math.sqrt(v_items), "se_between_sets": None if v_sets is None else math.sqrt(v_sets),
            "df": float(df), "note": None if k > 1 else "one control set: between-set variance not estimable"}
