"""The L1-regularised logistic-regression probe behind the H-Neurons (docs/METHOD.md section 4).

The probe solves, for each C on a path,

    min_{w, b}  ||w||_1 + C * sum_i s_i * log(1 + exp(-y_i (w . x_i + b))),      y_i in {-1, +1}

where ``s_i`` is an optional sample weight (default 1: the paper's unweighted fit). The H-Neurons are the
features with a **positive** weight at the chosen C.

Differences from the authors' scikit-learn/liblinear fit (our choices):

* **The bias is not regularised.** liblinear penalises the intercept as an extra feature of value
  ``intercept_scaling`` (``|b| / intercept_scaling`` enters the L1 term). :func:`fit_path_liblinear` uses a
  large ``intercept_scaling`` so that both fits solve (nearly) the same problem.
* **Solver.** A working-set (active-set) method in torch on the device of ``X``:

  1. the full gradient ``X^T g`` (one float32 pass over ``X``, the only operation that touches all
     ``d`` features) gives each excluded feature's KKT violation;
  2. the problem restricted to a small working set (the current support plus the worst violators,
     at most ``max(64, |support|)`` added per round, so the set roughly doubles as needed) is solved by
     proximal Newton (as in glmnet / newGLMNET): a quadratic model with the exact Hessian on the free
     coordinates (non-zero or violating), minimised with its L1 term by FISTA with adaptive restart
     plus feature-sign steps (exact Cholesky solves on the identified sign pattern), then an Armijo
     line search on the true objective; a proximal-gradient step is the safeguard when a Newton step
     makes no progress;
  3. repeat until no excluded feature violates the KKT conditions.

  Along a path, each C starts from the previous solution and from the sequential strong rule
  (Tibshirani et al. 2012) to seed the working set. The restricted problem (``n x |working set|``) is
  copied to float64: objective decreases near the optimum are below float32 resolution for sums over
  thousands of rows. The features themselves stay float32 and are never copied in full. On CPU the
  solver's many small operations run single-threaded (see :func:`_cpu_threads`); only the full passes
  over a large ``X`` and large Gram products use the caller's threads.
* **Convergence** is measured on the KKT conditions of the objective above, scaled like liblinear's
  penalty: for every feature, ``|C * dL/dw_j + sign(w_j)|`` (non-zero ``w_j``) or
  ``max(|C * dL/dw_j| - 1, 0)`` (zero ``w_j``), and ``|C * dL/db|`` for the bias, must all be at most
  ``tol``. A fit that hits ``max_iter`` Newton iterations first (e.g. perfectly separable data at a large
  C, where the weights grow without a useful bound) returns its last iterate with ``converged=False``;
  it never hangs and its weights are finite.

Constant or all-zero feature columns are harmless: their gradient vanishes once the (unregularised) bias
is fitted, so they stay at zero weight.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "PathPoint",
    "fit_l1_logreg",
    "fit_path",
    "default_C_grid",
    "fit_path_liblinear",
    "select_C",
    "probe_scores",
    "balanced_sample_weight",
    "objective",
]

_ARMIJO = 1e-4  # sufficient-decrease constant of the line searches
_MIN_ADD = 64  # features added to the working set per round, at least
_THREADED_PASS_MIN = 1 << 22  # elements from which a pass over X or a Gram product uses the caller's threads


@dataclass
class PathPoint:
    """One fitted probe. ``weight`` is float32 on the CPU; ``objective`` is
    ``||w||_1 + C * sum_i s_i * log(1 + exp(-y_i (w . x_i + b)))`` (bias unpenalised)."""

    C: float
    weight: torch.Tensor
    bias: float
    n_nonzero: int
    n_positive: int
    n_iter: int
    converged: bool
    objective: float
    kkt_violation: float = math.nan  # final max KKT violation (see the module docstring)

    def positive_index(self) -> torch.Tensor:
        """Flat indices of the features with positive weight (the H-Neurons), ascending."""
        return torch.nonzero(self.weight > 0).flatten()


# --------------------------------------------------------------------------------------------- inputs
@dataclass
class _Problem:
    """Validated inputs: X float32 [n, d]; t (0/1), sign (-1/+1) and s (sample weights) float64 [n]."""

    X: torch.Tensor
    t: torch.Tensor
    sign: torch.Tensor
    s: torch.Tensor
    threads: int = 1  # the caller's CPU threads, for the full passes over X

    @property
    def device(self) -> torch.device:
        return self.X.device


def _as_labels(y, n: int, device: torch.device) -> torch.Tensor:
    y_t = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)).flatten()
    if y_t.numel() != n:
        raise InputError(f"labels y have {y_t.numel()} entries but X has {n} rows")
    values = set(torch.unique(y_t).tolist())
    if not values <= {0, 1} and not values <= {-1, 1}:
        raise InputError(f"labels y must be binary (0/1, -1/+1 or bool); found the values {sorted(values)[:6]}")
    t = (y_t > 0).to(torch.float64).to(device)
    if t.min() == t.max():
        raise InputError(f"labels y contain only one class ({int(t[0])}); the probe needs both classes")
    return t


def _as_sample_weight(sample_weight, n: int, device: torch.device) -> torch.Tensor:
    if sample_weight is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    s = torch.as_tensor(np.asarray(sample_weight.cpu() if isinstance(sample_weight, torch.Tensor) else sample_weight),
                        dtype=torch.float64).flatten().to(device)
    if s.numel() != n:
        raise InputError(f"sample_weight has {s.numel()} entries but X has {n} rows")
    if not torch.isfinite(s).all() or (s < 0).any() or s.sum() <= 0:
        raise InputError("sample_weight must be finite, non-negative and not all zero")
    return s


def _problem(X: torch.Tensor, y, sample_weight=None) -> _Problem:
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(np.asarray(X))
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise InputError(f"features X must be a 2-D [rows, features] array; got shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise InputError(f"features X must be floating point; got {X.dtype}")
    if X.dtype != torch.float32:
        X = X.to(torch.float32)  # one copy; the solver reads float32 only
    if not torch.isfinite(X.sum(0)).all():  # one pass, no [n, d] boolean copy; huge values overflow too
        raise InputError(
            "features X contain NaN, inf or values too large for float32 sums "
            "(standardise with a guarded std, and check the extraction)"
        )
    t = _as_labels(y, X.shape[0], X.device)
    return _Problem(
        X=X, t=t, sign=2 * t - 1, s=_as_sample_weight(sample_weight, X.shape[0], X.device),
        threads=torch.get_num_threads(),
    )


def balanced_sample_weight(y) -> np.ndarray:
    """Class-balancing weights ``n / (2 * n_class)`` (scikit-learn's "balanced"), for the imbalanced 3-vs-1
    labelling. Not the default: the paper fits unweighted."""
    t = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).flatten() > 0
    n_pos = int(t.sum())
    if n_pos in (0, t.size):
        raise InputError("labels y contain only one class; class-balanced weights need both")
    return np.where(t, t.size / (2 * n_pos), t.size / (2 * (t.size - n_pos)))


# --------------------------------------------------------------------------------------- the objective
def _loss_terms(prob: _Problem, margin: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Weighted logistic loss sum, its derivative g = dL/dm and curvature D = d2L/dm2 per row (float64)."""
    loss = float((prob.s * torch.nn.functional.softplus(-prob.sign * margin)).sum())
    p = torch.sigmoid(margin)
    return loss, prob.s * (p - prob.t), prob.s * p * (1 - p)


def _full_gradient(prob: _Problem, g: torch.Tensor) -> torch.Tensor:
    """X^T g over all features: the one float32 pass over X (returned as float64), with the caller's
    CPU threads when X is large enough to gain from them."""
    threads = prob.threads if prob.X.numel() >= _THREADED_PASS_MIN else 1
    with _cpu_threads(prob.device, threads):
        return (g.to(torch.float32) @ prob.X).to(torch.float64)


def _pseudo_gradient(w: torch.Tensor, grad: torch.Tensor, lam: float) -> torch.Tensor:
    """Minimum-norm subgradient of loss + lam * ||w||_1 (zero where a zero weight is optimal)."""
    at_zero = torch.sign(grad) * torch.clamp(grad.abs() - lam, min=0)
    return torch.where(w != 0, grad + lam * torch.sign(w), at_zero)


def objective(X: torch.Tensor, y, weight: torch.Tensor, bias: float, C: float, sample_weight=None) -> float:
    """``||w||_1 + C * sum_i s_i log(1 + exp(-y_i (w.x_i + b)))`` in float64 (bias unpenalised)."""
    prob = _problem(X, y, sample_weight)
    w = torch.as_tensor(weight, dtype=torch.float64, device=prob.device).flatten()
    support = torch.nonzero(w).flatten()
    margin = prob.X[:, support].to(torch.float64) @ w[support] + float(bias)
    return float(w.abs().sum()) + C * _loss_terms(prob, margin)[0]


# ---------------------------------------------------------------------- restricted (working-set) solver
@dataclass
class _Restricted:
    """The problem on the working-set columns (XW32 float32 [n, k], XW its float64 copy) at lam = 1/C."""

    prob: _Problem
    XW32: torch.Tensor
    lam: float

    def __post_init__(self):
        self.XW = self.XW32.to(torch.float64)

    def value(self, w: torch.Tensor, b: float) -> tuple[float, torch.Tensor]:
        margin = self.XW @ w + b
        loss = float((self.prob.s * torch.nn.functional.softplus(-self.prob.sign * margin)).sum())
        return loss + self.lam * float(w.abs().sum()), margin


def _damped_solve_(H: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor | None:
    """Solve (H + mu I) x = rhs with a tiny mu (relative 1e-10, growing while Cholesky fails): H is
    singular when the free set exceeds the rows or columns repeat. Overwrites H. None when nothing works."""
    diagonal = H.diagonal()
    mu = 1e-10 * (float(diagonal.abs().max()) or 1.0)
    diagonal += mu
    for _ in range(6):
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            return torch.cholesky_solve(rhs.unsqueeze(1), L).squeeze(1)
        diagonal += 99 * mu
        mu *= 100
    return None


@dataclass
class _QP:
    """The Newton model on the free coordinates plus the bias (last):
    q(u) = u^T H u / 2 + c^T u + lam * ||u[:-1]||_1, minimised by FISTA after Jacobi scaling."""

    H: torch.Tensor
    c: torch.Tensor
    lam: float

    def kkt(self, u: torch.Tensor) -> torch.Tensor:
        """Minimum-norm subgradient of q at u (bias last, unpenalised)."""
        grad = self.H @ u + self.c
        return torch.cat([_pseudo_gradient(u[:-1], grad[:-1], self.lam), grad[-1:]])

    def refine(self, u: torch.Tensor, max_steps: int = 4) -> torch.Tensor:
        """Feature-sign steps (Lee et al. 2007): solve exactly for the sign pattern of u and move towards
        that solution up to the first coefficient that reaches zero, which leaves the pattern. Each step
        lowers q; the result keeps consistent signs (zero coordinates may still violate the KKT
        conditions: FISTA handles those)."""
        bias = torch.tensor([u.numel() - 1], device=u.device)
        for _ in range(max_steps):
            keep = torch.cat([torch.nonzero(u[:-1]).flatten(), bias])
            signs = torch.sign(u[keep])
            signs[-1] = 0  # the bias carries no penalty
            x = _damped_solve_(self.H[keep.unsqueeze(1), keep], -(self.c[keep] + self.lam * signs))
            if x is None:
                return u
            current = u[keep]
            crossing = x * signs < 0
            if not bool(crossing.any()):
                out = torch.zeros_like(u)
                out[keep] = x
                return out
            reach = current[crossing] / (current[crossing] - x[crossing])  # in (0, 1]
            moved = current + float(reach.min()) * (x - current)
            moved[(moved * signs <= 0) & (signs != 0)] = 0.0  # the first crossing(s) land exactly on zero
            moved[torch.nonzero(crossing).flatten()[reach <= reach.min() * (1 + 1e-9)]] = 0.0
            u = torch.zeros_like(u)
            u[keep] = moved
        return u


def _power_max_eig(H: torch.Tensor, iters: int = 30) -> float:
    v = torch.ones(H.shape[0], dtype=H.dtype, device=H.device) / math.sqrt(H.shape[0])
    value = 1.0
    for _ in range(iters):
        hv = H @ v
        value = float(hv.norm())
        if value == 0:
            return 1.0
        v = hv / value
    return value


def _solve_qp(qp: _QP, u0: torch.Tensor, target: float, C: float, max_iter: int = 2000) -> torch.Tensor:
    """Approximately minimise the Newton model from u0 until its scaled KKT violation is <= target.

    FISTA with gradient-based adaptive restart (O'Donoghue & Candes 2015) on the Jacobi-scaled model
    (unit diagonal: the step 1/L suits all coordinates; its matrix products run in float32, the KKT
    checks in float64); whenever the sign pattern is stable between checks, feature-sign steps (exact
    solves on the pattern) usually finish the job."""
    scale = 1.0 / torch.sqrt(qp.H.diagonal().clamp(min=1e-12))
    Hs = (scale.unsqueeze(1) * qp.H * scale.unsqueeze(0)).to(torch.float32)
    cs = (qp.c * scale).to(torch.float32)
    thresholds = (qp.lam * scale).to(torch.float32)
    thresholds[-1] = 0.0
    step = 1.0 / (1.05 * _power_max_eig(Hs))
    x = (u0 / scale).to(torch.float32)
    y, t = x.clone(), 1.0
    best_u, best_kkt = u0, C * float(qp.kkt(u0).abs().max())
    start_kkt = best_kkt
    pattern = None
    for it in range(1, max_iter + 1):
        z = y - step * (Hs @ y + cs)
        x_new = torch.sign(z) * torch.clamp(z.abs() - step * thresholds, min=0)
        if float((y - x_new) @ (x_new - x)) > 0:  # momentum points uphill: restart
            t = 1.0
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = x_new + ((t - 1) / t_new) * (x_new - x)
        x, t = x_new, t_new
        if it % 10:
            continue
        u = x.to(torch.float64) * scale
        kkt = C * float(qp.kkt(u).abs().max())
        if kkt < best_kkt:
            best_u, best_kkt = u, kkt
        if best_kkt <= target:
            break
        if not kkt < 100 * start_kkt:  # the power-iteration step was too long: halve it, restart from the best
            step *= 0.5
            x = (best_u / scale).to(torch.float32)
            y, t, pattern = x.clone(), 1.0, None
            continue
        new_pattern = torch.sign(u[:-1])
        if pattern is not None and torch.equal(pattern, new_pattern):
            u = qp.refine(u)
            kkt = C * float(qp.kkt(u).abs().max())
            if kkt < best_kkt:
                best_u, best_kkt = u, kkt
            if best_kkt <= target:
                break
            x = (u / scale).to(torch.float32)
            y, t = x.clone(), 1.0
            new_pattern = torch.sign(u[:-1])
        pattern = new_pattern
    return best_u


def _newton_model(rp: _Restricted, w, b, gw, gb, v, D) -> tuple[torch.Tensor, torch.Tensor, _QP]:
    """The proximal-Newton model on the free coordinates (non-zero, or zero but violating), in terms of
    the new point u = (w_free, b). The Hessian only shapes the step (the line search uses the float64
    objective), so its Gram product, the costliest step, runs in float32."""
    free = torch.nonzero((w != 0) | (v != 0)).flatten()
    Z = rp.XW32[:, free]
    DZ = D.to(torch.float32).unsqueeze(1) * Z
    k = free.numel()
    H = torch.empty(k + 1, k + 1, dtype=torch.float64, device=w.device)
    with _cpu_threads(w.device, rp.prob.threads if Z.numel() >= _THREADED_PASS_MIN else 1):
        H[:k, :k] = Z.T @ DZ
    H[:k, k] = H[k, :k] = DZ.sum(0, dtype=torch.float64)
    H[k, k] = D.sum()
    u0 = torch.cat([w[free], torch.tensor([b], dtype=torch.float64, device=w.device)])
    grad = torch.cat([gw[free], gb.reshape(1)])
    return free, u0, _QP(H=H, c=grad - H @ u0, lam=rp.lam)


def _line_search(rp: _Restricted, w, b, f0, gw, gb, free, u):
    """Armijo backtracking along the proximal-Newton direction; (w, b, f, margin) or None on failure."""
    dw, db = u[:-1] - w[free], float(u[-1]) - b
    decrease = float(gw[free] @ dw) + float(gb) * db + rp.lam * (float(u[:-1].abs().sum()) - float(w[free].abs().sum()))
    if not decrease < 0:
        return None
    alpha = 1.0
    for _ in range(30):
        w_new = w.clone()
        w_new[free] = w[free] + alpha * dw
        f_new, margin = rp.value(w_new, b + alpha * db)
        if f_new <= f0 + _ARMIJO * alpha * decrease:
            return w_new, b + alpha * db, f_new, margin
        alpha *= 0.5
    return None


def _prox_gradient_step(rp: _Restricted, w, b, f0, gw, gb, lipschitz):
    """Safeguard: one proximal-gradient step with backtracking (always descends unless at float64 limits)."""
    step = 1.0 / lipschitz
    for _ in range(60):
        z = w - step * gw
        w_new = torch.sign(z) * torch.clamp(z.abs() - step * rp.lam, min=0)
        b_new = b - step * float(gb)
        f_new, margin = rp.value(w_new, b_new)
        if f_new < f0:
            return w_new, b_new, f_new, margin
        step *= 0.5
    return None


def _solve_restricted(rp: _Restricted, w, b, tol, max_iter):
    """Proximal Newton on the working set. Returns (w, b, n_iter, kkt, margin, g)."""
    C = 1.0 / rp.lam
    f, margin = rp.value(w, b)
    lipschitz = None
    n_iter = 0
    while True:
        _, g, D = _loss_terms(rp.prob, margin)
        gw, gb = rp.XW.T @ g, g.sum()
        v = _pseudo_gradient(w, gw, rp.lam)
        kkt = C * max(float(v.abs().max()) if v.numel() else 0.0, abs(float(gb)))
        if kkt <= tol or n_iter >= max_iter:
            return w, b, n_iter, kkt, margin, g
        n_iter += 1
        free, u0, qp = _newton_model(rp, w, b, gw, gb, v, D)
        u = _solve_qp(qp, u0, target=max(0.1 * kkt, 0.25 * tol), C=C)  # inexact: 10x smaller violation
        moved = _line_search(rp, w, b, f, gw, gb, free, u)
        if moved is None:
            if lipschitz is None:  # ||[XW 1]||_2^2 / 4 * max(s) bounds the gradient's Lipschitz constant
                lipschitz = 0.25 * float(rp.prob.s.max()) * (float((rp.XW**2).sum()) + rp.XW.shape[0])
            moved = _prox_gradient_step(rp, w, b, f, gw, gb, lipschitz)
        if moved is None:  # no representable decrease left: report the KKT value reached
            return w, b, n_iter, kkt, margin, g
        w, b, f, margin = moved


# ----------------------------------------------------------------------------------- the full problem
@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Temporarily run CPU torch operations with ``threads`` intra-op threads (restored afterwards).

    The solver's thousands of small operations gain nothing from intra-op threads, and on a busy machine
    the threads' barrier waits slow them down by one to two orders of magnitude (measured here: a 0.17 s
    path took 14 s with 2 threads on 2 loaded cores), so fits run single-threaded on CPU except for the
    large passes. Note: this changes torch's process-wide setting while a fit runs."""
    before = torch.get_num_threads()
    if device.type != "cpu" or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _top_violators(score: torch.Tensor, threshold: float, count: int) -> torch.Tensor:
    """Indices of the (at most ``count``) largest entries of ``score`` above ``threshold``."""
    over = torch.nonzero(score > threshold).flatten()
    if over.numel() > count:
        over = over[torch.topk(score[over], count).indices]
    return over


def _solve(prob, C, w, b, grad, strong_threshold, tol, max_iter):
    """Working-set loop at one C. ``w`` (float64 [d]) and ``grad`` (X^T g at (w, b)) are the warm start.

    Returns (w, b, grad, n_iter, converged, kkt)."""
    lam = 1.0 / C
    support = torch.nonzero(w).flatten()
    outside = grad.abs().clone()
    outside[support] = -1.0
    add = _top_violators(outside, strong_threshold, max(_MIN_ADD, support.numel()))
    work = torch.unique(torch.cat([support, add]))
    n_iter = 0
    while True:
        rp = _Restricted(prob, prob.X[:, work], lam)
        w_work, b, used, kkt_in, margin, g = _solve_restricted(rp, w[work], b, tol, max_iter - n_iter)
        n_iter += used
        w = torch.zeros_like(w)
        w[work] = w_work
        grad = _full_gradient(prob, g)
        outside = grad.abs()
        outside[work] = -1.0
        kkt_out = C * max(float(outside.max()) - lam, 0.0)
        kkt = max(kkt_in, kkt_out)
        if kkt <= tol or n_iter >= max_iter:
            return w, b, grad, n_iter, kkt <= tol, kkt
        if kkt_out <= tol:  # the restricted solve stopped short (no representable decrease left)
            return w, b, grad, n_iter, False, kkt
        support = torch.nonzero(w_work).flatten().numel()
        add = _top_violators(outside, lam + tol / C, max(_MIN_ADD, support))  # i.e. C * |grad_j| > 1 + tol
        work = torch.unique(torch.cat([work, add]))


def _null_model(prob: _Problem) -> tuple[float, torch.Tensor]:
    """Intercept-only fit: b = logit of the weighted positive rate; returns (b, g)."""
    rate = float((prob.s * prob.t).sum() / prob.s.sum())
    if not 0 < rate < 1:
        raise InputError("sample_weight gives one class zero total weight; the probe needs both classes")
    b = math.log(rate / (1 - rate))
    _, g, _ = _loss_terms(prob, torch.full_like(prob.t, b))
    return b, g


def _point(prob, C, w, b, n_iter, converged, kkt) -> PathPoint:
    support = torch.nonzero(w).flatten()
    margin = prob.X[:, support].to(torch.float64) @ w[support] + b
    value = float(w.abs().sum()) + C * _loss_terms(prob, margin)[0]
    weight = w.to(torch.float32).cpu()
    return PathPoint(
        C=float(C), weight=weight, bias=float(b), n_nonzero=int((weight != 0).sum()),
        n_positive=int((weight > 0).sum()), n_iter=int(n_iter), converged=bool(converged),
        objective=value, kkt_violation=float(kkt),
    )


def _check_C(C: float) -> float:
    if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
        raise InputError(f"the regularisation constant C must be a positive finite number; got {C!r}")
    return float(C)


def fit_l1_logreg(
    X: torch.Tensor,
    y,
    C: float,
    *,
    w0: torch.Tensor | None = None,
    b0: float | None = None,
    tol: float = 1e-4,
    max_iter: int = 500,
    sample_weight=None,
) -> PathPoint:
    """Fit the L1 logistic probe at one C (see the module docstring for the objective and the solver).

    X: float [n, d] (standardised features; float32 on any device, used in place). y: 0/1, -1/+1 or bool.
    w0, b0: optional warm start. max_iter caps the Newton iterations over all working-set rounds.
    sample_weight: optional per-row weights (default unweighted, as in the paper; see
    :func:`balanced_sample_weight`)."""
    prob = _problem(X, y, sample_weight)
    C = _check_C(C)
    with _cpu_threads(prob.device, 1):
        return _fit_one(prob, C, w0, b0, tol, max_iter)


def _fit_one(prob: _Problem, C: float, w0, b0, tol: float, max_iter: int) -> PathPoint:
    if w0 is None:
        b, g = _null_model(prob)
        w = torch.zeros(prob.X.shape[1], dtype=torch.float64, device=prob.device)
    else:
        w = torch.as_tensor(w0, dtype=torch.float64).flatten().to(prob.device)
        if w.numel() != prob.X.shape[1]:
            raise InputError(f"warm start w0 has {w.numel()} entries but X has {prob.X.shape[1]} features")
        support = torch.nonzero(w).flatten()
        b = float(b0) if b0 is not None else _null_model(prob)[0]
        margin = prob.X[:, support].to(torch.float64) @ w[support] + b
        g = _loss_terms(prob, margin)[1]
    grad = _full_gradient(prob, g)
    w, b, _, n_iter, converged, kkt = _solve(prob, C, w, b, grad, 1.0 / C, tol, max_iter)
    return _point(prob, C, w, b, n_iter, converged, kkt)


def fit_path(
    X: torch.Tensor,
    y,
    Cs: Sequence[float],
    *,
    tol: float = 1e-4,
    max_iter: int = 500,
    progress: bool = False,
    sample_weight=None,
) -> list[PathPoint]:
    """Fit the probe at every C, in increasing C, each warm-started from the previous solution.

    Returns the points sorted by increasing C (whatever the order of ``Cs``)."""
    Cs = sorted(_check_C(C) for C in Cs)
    if not Cs:
        raise InputError("the C grid is empty")
    prob = _problem(X, y, sample_weight)
    with _cpu_threads(prob.device, 1):
        return _fit_path(prob, Cs, tol, max_iter, progress)


def _fit_path(prob: _Problem, Cs: list[float], tol: float, max_iter: int, progress: bool) -> list[PathPoint]:
    b, g = _null_model(prob)
    w = torch.zeros(prob.X.shape[1], dtype=torch.float64, device=prob.device)
    grad = _full_gradient(prob, g)
    lam_prev = float(grad.abs().max())  # the strong rule's previous lambda: the path starts at w = 0
    points = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(Cs), desc="probe path", unit="C")
    for C in Cs:
        lam = 1.0 / C
        strong = max(2 * lam - lam_prev, 0.0)  # sequential strong rule (Tibshirani et al. 2012)
        w, b, grad, n_iter, converged, kkt = _solve(prob, C, w, b, grad, strong, tol, max_iter)
        points.append(_point(prob, C, w, b, n_iter, converged, kkt))
        lam_prev = lam
        if bar is not None:
            bar.update(1)
            bar.set_postfix(C=f"{C:.3g}", nonzero=points[-1].n_nonzero)
    if bar is not None:
        bar.close()
    return points


def default_C_grid(X: torch.Tensor, y, n: int = 20, *, span: float = 1000.0, sample_weight=None) -> list[float]:
    """``n`` log-spaced C values from C_min to ``span * C_min``.

    C_min = 1 / ||X^T s (t - t_bar)||_inf is exact for the unpenalised bias: at w = 0 the optimal bias gives
    every row the predicted probability t_bar (the weighted positive rate), so w = 0 satisfies the KKT
    conditions iff C * |X_j^T s (t - t_bar)| <= 1 for every feature j. The first feature enters just above
    C_min, so the grid starts at (numerically) zero features."""
    if n < 1 or span < 1:
        raise InputError(f"the C grid needs n >= 1 points and span >= 1; got n={n}, span={span}")
    prob = _problem(X, y, sample_weight)
    _, g = _null_model(prob)
    lam_max = float(_full_gradient(prob, g).abs().max())
    if lam_max == 0:
        raise InputError("no feature correlates with the labels (all features constant?): the probe is empty at every C")
    c_min = 1.0 / lam_max
    return [float(c) for c in np.geomspace(c_min, c_min * span, n)] if n > 1 else [c_min]


# ------------------------------------------------------------------------------ reference and selection
def fit_path_liblinear(
    X_np: np.ndarray,
    y_np,
    Cs: Sequence[float],
    *,
    tol: float = 1e-4,
    intercept_scaling: float = 1e3,
    max_iter: int = 1000,
    sample_weight=None,
) -> list[PathPoint]:
    """The scikit-learn/liblinear reference (the authors' solver), one independent fit per C.

    liblinear penalises the bias as ``|b| / intercept_scaling``; the large default makes that negligible so
    the fit matches :func:`fit_path`'s unpenalised bias. ``objective`` is computed with our convention.
    X is converted to float64 once (liblinear works in float64)."""
    from sklearn.linear_model import LogisticRegression

    X64 = np.ascontiguousarray(X_np, dtype=np.float64)
    t = (np.asarray(y_np).flatten() > 0).astype(np.int64)
    prob = None
    points = []
    for C in sorted(_check_C(C) for C in Cs):
        model = LogisticRegression(
            l1_ratio=1.0, solver="liblinear", C=C, tol=tol, intercept_scaling=intercept_scaling, max_iter=max_iter,
            random_state=0,
        )
        model.fit(X64, t, sample_weight=sample_weight)
        if prob is None:
            prob = _problem(torch.from_numpy(np.asarray(X_np, dtype=np.float32)), t, sample_weight)
        w = torch.from_numpy(model.coef_[0].copy())
        n_iter = int(np.max(model.n_iter_))
        points.append(_point(prob, C, w, float(model.intercept_[0]), n_iter, n_iter < max_iter, math.nan))
    return points


_RULES = ("sparsest_within", "best")


def select_C(path: Sequence[PathPoint], val_auroc: Sequence[float], rule: str = "sparsest_within", tol: float = 0.01) -> int:
    """Index into ``path`` of the chosen C, from validation AUROCs (never test ones).

    "best": the highest validation AUROC (ties: the smallest C). "sparsest_within" (default): the smallest C
    whose validation AUROC is within ``tol`` of the best one, i.e. the sparsest probe that is as good as
    the best up to ``tol``."""
    scores = np.asarray(val_auroc, dtype=np.float64).flatten()
    if len(path) == 0 or scores.size != len(path):
        raise InputError(f"select_C needs one validation AUROC per path point; got {scores.size} for {len(path)} points")
    if not np.isfinite(scores).all():
        raise InputError(f"validation AUROCs must be finite; got {scores.tolist()}")
    if rule not in _RULES:
        raise InputError(f"unknown C-selection rule {rule!r}; expected one of {', '.join(_RULES)}")
    if tol < 0:
        raise InputError(f"the C-selection tolerance must be >= 0; got {tol}")
    margin = tol if rule == "sparsest_within" else 0.0
    eligible = np.nonzero(scores >= scores.max() - margin)[0]
    return int(min(eligible, key=lambda i: (path[i].C, path[i].n_nonzero)))


def probe_scores(X: torch.Tensor, point: PathPoint) -> torch.Tensor:
    """Probe logits ``X w + b`` (float32 [n], on X's device); reads only the support's columns."""
    if X.ndim != 2 or X.shape[1] != point.weight.numel():
        raise InputError(f"features X must be [rows, {point.weight.numel()}]; got shape {tuple(X.shape)}")
    support = torch.nonzero(point.weight).flatten()
    w = point.weight[support].to(device=X.device, dtype=torch.float32)
    return X[:, support.to(X.device)].to(torch.float32) @ w + point.bias
