"""The L1 logistic probe: planted signal, agreement with liblinear, the path, robustness, C selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from editor.errors import InputError
from editor.locate.probe import (
    PathPoint,
    balanced_sample_weight,
    default_C_grid,
    fit_l1_logreg,
    fit_path,
    fit_path_liblinear,
    objective,
    probe_scores,
    select_C,
)


def _planted(n, d, coef_head, seed, offset=0.0):
    """Gaussian X; y from a logistic model on the first len(coef_head) columns."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    coef = np.zeros(d)
    coef[: len(coef_head)] = coef_head
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ coef + offset)))).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def planted():
    return _planted(400, 2000, [2.0, 1.5, 1.5, -2.0, -1.5, -1.5], seed=0)


def test_planted_signal_is_recovered_with_signs(planted):
    X, y = planted
    Xt = torch.from_numpy(X)
    c_min = default_C_grid(Xt, y, n=1)[0]
    point = fit_l1_logreg(Xt, y, 2.5 * c_min)
    w = point.weight
    assert point.converged
    assert (w[:3] > 0).all(), w[:6]
    assert (w[3:6] < 0).all(), w[:6]
    assert int((w[6:] != 0).sum()) <= 5
    assert point.n_positive == int((w > 0).sum()) and point.n_nonzero == int((w != 0).sum())
    assert set(point.positive_index().tolist()) >= {0, 1, 2}
    assert w.dtype == torch.float32 and w.device.type == "cpu"


def test_matches_liblinear_support_and_objective():
    X, y = _planted(300, 400, [1.5, 1, 1, 0.8, -1.5, -1, -1, -0.8], seed=1, offset=-0.5)
    Xt = torch.from_numpy(X)
    c_min = default_C_grid(Xt, y, n=1)[0]
    for mult in (3.0, 10.0):
        C = mult * c_min
        ours = fit_l1_logreg(Xt, y, C, tol=1e-6)
        ref = fit_path_liblinear(X, y, [C], tol=1e-8, intercept_scaling=1e4, max_iter=100_000)[0]
        assert ours.converged and ref.converged
        assert torch.equal(ours.weight != 0, ref.weight != 0)
        assert torch.equal(ours.weight > 0, ref.weight > 0)
        assert abs(ours.objective - ref.objective) <= 1e-3 * ref.objective
        # both objectives are ours (bias unpenalised), and the torch fit is at least as good
        assert ours.objective <= ref.objective * (1 + 1e-6)
        assert math.isclose(ref.objective, objective(Xt, y, ref.weight, ref.bias, C), rel_tol=1e-9)
        assert abs(ours.bias - ref.bias) < 1e-3


def test_path_is_warm_started_and_grows(planted):
    X, y = planted
    Xt = torch.from_numpy(X)
    Cs = default_C_grid(Xt, y, n=10, span=100)
    assert len(Cs) == 10 and math.isclose(Cs[-1] / Cs[0], 100, rel_tol=1e-9)
    path = fit_path(Xt, y, list(reversed(Cs)))  # any order in, increasing C out
    assert [p.C for p in path] == sorted(Cs)
    assert path[0].n_nonzero == 0  # the grid starts where the first feature is about to enter
    counts = [p.n_nonzero for p in path]
    assert all(b >= a - 2 for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] > counts[1] > 0
    assert all(p.converged for p in path)
    # the warm-started path reaches the same solutions as cold single fits
    for p in (path[3], path[7]):
        cold = fit_l1_logreg(Xt, y, p.C)
        assert torch.equal(cold.weight != 0, p.weight != 0)
        assert torch.allclose(cold.weight, p.weight, atol=2e-3)
        assert math.isclose(cold.objective, p.objective, rel_tol=1e-6)
    # an explicit warm start from the previous point gives the same answer as well
    warm = fit_l1_logreg(Xt, y, path[5].C, w0=path[4].weight, b0=path[4].bias)
    assert torch.equal(warm.weight != 0, path[5].weight != 0)


def test_default_grid_bound_is_exact(planted):
    X, y = planted
    Xt = torch.from_numpy(X)
    c_min = default_C_grid(Xt, y, n=1)[0]
    assert fit_l1_logreg(Xt, y, 0.999 * c_min).n_nonzero == 0
    assert fit_l1_logreg(Xt, y, 1.05 * c_min).n_nonzero >= 1


def test_constant_zero_and_duplicate_columns():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(300, 40, generator=gen)
    X[:, 3] = 0.0
    X[:, 4] = 2.5  # constant: collinear with the (unpenalised) bias
    X[:, 5] = X[:, 6]
    y = (X[:, 6] + 0.5 * torch.randn(300, generator=gen) > 0).long()
    for point in fit_path(X, y, default_C_grid(X, y, n=6)):
        assert point.converged
        assert torch.isfinite(point.weight).all() and math.isfinite(point.bias)
        assert point.weight[3] == 0 and point.weight[4] == 0
    assert point.weight[5] + point.weight[6] > 1.0  # the duplicated signal column is used


def test_separable_data_terminates_with_finite_weights():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(200, 50, generator=gen)
    y = (X[:, 0] > 0).long()
    for C in (10.0, 1e6):
        point = fit_l1_logreg(X, y, C, max_iter=200)
        assert torch.isfinite(point.weight).all() and math.isfinite(point.objective)
        assert point.weight[0] > 0
    capped = fit_l1_logreg(X, y, 1e6, max_iter=1)
    assert not capped.converged and capped.n_iter == 1
    assert torch.isfinite(capped.weight).all() and math.isfinite(capped.objective)


def test_more_features_than_rows():
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(20, 5000, generator=gen)
    y = torch.tensor([0, 1] * 10)
    path = fit_path(X, y, default_C_grid(X, y, n=8))
    assert all(p.converged and torch.isfinite(p.weight).all() for p in path)
    assert 0 < path[-1].n_nonzero <= 21  # an L1 solution needs at most n + 1 non-zeros


def test_sample_weight_equals_duplicated_rows(planted):
    X, y = planted
    X, y = X[:150, :300], y[:150]
    weights = np.ones(150)
    weights[:40] = 2.0
    Xt = torch.from_numpy(X)
    C = 3 * default_C_grid(Xt, y, n=1)[0]
    weighted = fit_l1_logreg(Xt, y, C, sample_weight=weights, tol=1e-6)
    duplicated = fit_l1_logreg(torch.from_numpy(np.concatenate([X, X[:40]])), np.concatenate([y, y[:40]]), C, tol=1e-6)
    assert torch.equal(weighted.weight != 0, duplicated.weight != 0)
    assert torch.allclose(weighted.weight, duplicated.weight, atol=1e-4)
    balanced = balanced_sample_weight(y)
    assert math.isclose(balanced[y == 1].sum(), balanced[y == 0].sum())
    assert fit_l1_logreg(Xt, y, C, sample_weight=balanced).converged


def test_probe_scores_are_the_logits(planted):
    X, y = planted
    Xt = torch.from_numpy(X)
    point = fit_l1_logreg(Xt, y, 3 * default_C_grid(Xt, y, n=1)[0])
    expected = Xt.double() @ point.weight.double() + point.bias
    assert torch.allclose(probe_scores(Xt, point).double(), expected, atol=1e-4)
    with pytest.raises(InputError, match="features X must be"):
        probe_scores(Xt[:, :10], point)


def test_input_errors():
    X = torch.randn(10, 5)
    with pytest.raises(InputError, match="only one class"):
        fit_l1_logreg(X, torch.ones(10), 1.0)
    with pytest.raises(InputError, match="binary"):
        fit_l1_logreg(X, torch.arange(10), 1.0)
    with pytest.raises(InputError, match="9 entries"):
        fit_l1_logreg(X, torch.tensor([0, 1] * 4 + [0]), 1.0)
    with pytest.raises(InputError, match="positive finite"):
        fit_l1_logreg(X, torch.tensor([0, 1] * 5), -1.0)
    bad = X.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fit_path(bad, torch.tensor([0, 1] * 5), [1.0])
    with pytest.raises(InputError, match="zero total weight"):
        fit_l1_logreg(X, torch.tensor([0, 1] * 5), 1.0, sample_weight=torch.tensor([1.0, 0.0] * 5))


def _point(C, nonzero):
    weight = torch.zeros(10)
    weight[:nonzero] = 1.0
    return PathPoint(C=C, weight=weight, bias=0.0, n_nonzero=nonzero, n_positive=nonzero, n_iter=1, converged=True, objective=1.0)


def test_select_C_rules():
    path = [_point(0.1, 0), _point(0.2, 2), _point(0.4, 4), _point(0.8, 6), _point(1.6, 8)]
    val = [0.50, 0.695, 0.704, 0.712, 0.709]
    assert select_C(path, val, rule="best") == 3
    assert select_C(path, val) == 2  # sparsest within 0.01 of 0.712: 0.704 (0.695 is 0.017 below)
    assert select_C(path, val, tol=0.02) == 1
    assert select_C(path, val, tol=0.0) == 3
    assert select_C(path, [0.7, 0.7, 0.7, 0.7, 0.7], rule="best") == 0  # ties go to the sparsest
    with pytest.raises(InputError, match="one validation AUROC per path point"):
        select_C(path, val[:3])
    with pytest.raises(InputError, match="unknown C-selection rule"):
        select_C(path, val, rule="max")
