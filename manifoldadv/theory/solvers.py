"""Numerical solvers for the theory's optimisation problems, independent of the closed forms:
the Lagrangian inner maximisations by scipy on random, non-diagonal problems (Lemmas 2 and 6,
Theorem 4's proof), evidence that Theorem 4's supremum is unbounded, and the saddle-point
equations of Theorems 5 and 6 solved by bisection on their monotone residuals."""

from __future__ import annotations

import numpy as np

from .closed_form import (as_spectrum, latent_perturbation_matrix, original_perturbation_matrix, ppca,
                          strategy_spectrum)
from .gaussian import GaussianLoss, population, random_spd
from .saddle import latent_fixed_point_map, original_fixed_point_map


def minimize(*args, **kw):
    """scipy.optimize.minimize, imported on first use (scipy.optimize is 0.4 s of every CLI start)."""
    from scipy import optimize

    return optimize.minimize(*args, **kw)


# --------------------------------------------------------------------------- inner maximisation


def lagrangian_unbounded(lam, Lp: float, x_scale: float = 1.0, seed: int = 0) -> dict:
    """Numerical evidence that Theorem 4's inner sup is ``+inf`` when ``L' lam_min <= 1``:
    scipy maximises ``l(x + dx) - L'/2 |dx|^2`` for a sample x from an unconstrained start and
    reports the objective it reaches (it runs away) along with the values along the
    smallest-eigenvalue direction at growing distances."""
    rng = np.random.default_rng(seed)
    lam = as_spectrum(lam)
    pop = population(np.maximum(lam, 0.0), rng)
    Sigma = pop.Sigma
    loss = GaussianLoss(pop.mu, Sigma)
    x = pop.sample(1, rng)[0] * x_scale

    def obj(dx):
        v = loss((x + dx)[None, :])[0] - 0.5 * Lp * dx @ dx
        return -v if np.isfinite(v) else -1e300

    res = minimize(obj, np.zeros(pop.d), method="BFGS", options={"maxiter": 200})
    u = pop.U[:, -1]
    ts = 10.0 ** np.arange(0, 7)
    along = [float(loss((x + t * u)[None, :])[0] - 0.5 * Lp * t * t - loss(x[None, :])[0]) for t in ts]
    return {"optimizer_value": float(-res.fun), "distances": ts.tolist(), "along_min_direction": along}


def _maximise(objective, start) -> np.ndarray:
    """The maximiser of ``objective`` by BFGS with numerical gradients, tight tolerances."""
    res = minimize(lambda v: -objective(v), start, method="BFGS", options={"gtol": 1e-10, "maxiter": 2000})
    return res.x


def brute_latent_inner(W, Sigma, mu, x, L) -> np.ndarray:
    """Maximise ``l(x + W dz; mu, Sigma) - L/2 |dz|^2`` over dz with scipy (BFGS, numerical
    gradients) from a random start; returns the maximiser."""
    W, S, mu, x = (np.asarray(v, dtype=np.float64) for v in (W, Sigma, mu, x))
    loss = GaussianLoss(mu, S)
    return _maximise(lambda dz: loss((x + W @ dz)[None, :])[0] - 0.5 * L * dz @ dz,
                     np.random.default_rng(0).standard_normal(W.shape[1]))


def brute_original_inner(Sigma, mu, x, Lp) -> np.ndarray:
    """Maximise ``l(x + dx; mu, Sigma) - L'/2 |dx|^2`` over dx with scipy (BFGS, numerical gradients)."""
    S, mu, x = (np.asarray(v, dtype=np.float64) for v in (Sigma, mu, x))
    loss = GaussianLoss(mu, S)
    return _maximise(lambda dx: loss((x + dx)[None, :])[0] - 0.5 * Lp * dx @ dx,
                     np.random.default_rng(1).standard_normal(S.shape[0]))


def brute_latent_matrix(W, Sigma, mu, X, L) -> np.ndarray:
    """Lemma 6: maximise the sample average of ``l(x + W M (x - mu)) - L/2 |M (x - mu)|^2`` over
    the q x d matrix M (scipy L-BFGS with the gradient of that average)."""
    W, S, mu, X = (np.asarray(v, dtype=np.float64) for v in (W, Sigma, mu, X))
    q, d = W.shape[1], W.shape[0]
    V = X - mu
    res = minimize(matrix_lagrangian(W, np.linalg.inv(S), V.T @ V / V.shape[0], L), np.zeros(q * d),
                   jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    return res.x.reshape(q, d)


def matrix_lagrangian(W, Si, C, L):
    """Lemma 6's objective in the k x n matrix M (flattened), negated for scipy, with its gradient:
    ``1/2 tr(A^T Si A C) - L/2 tr(M C M^T)``, ``A = I + W M``, for a model with inverse covariance
    ``Si`` and inputs with second moments ``C`` around the model mean."""
    k, n = W.shape[1], W.shape[0]

    def neg(flat):
        M = flat.reshape(k, n)
        A = np.eye(n) + W @ M
        val = 0.5 * np.trace(A.T @ Si @ A @ C) - 0.5 * L * np.trace(M @ C @ M.T)
        grad = W.T @ Si @ A @ C - L * M @ C
        return -val, -grad.ravel()

    return neg


def inner_max_trials(trials: int = 3, d: int = 6, q: int = 3, seed: int = 0) -> dict:
    """Brute force against the closed-form maximisers on random, non-diagonal problems: for each
    trial a random SPD model covariance (not aligned with anything), a random decoder W (d x q),
    a random mean and point, and L (L') just above the concavity threshold times a random factor.
    Returns the largest relative errors of Lemma 2 (per-sample latent), Lemma 6 (matrix M over a
    sample) and Theorem 4's proof (original space), each maximised numerically by scipy."""
    rng = np.random.default_rng(seed)
    errs = {"lemma2": 0.0, "lemma6": 0.0, "original": 0.0}
    for _ in range(trials):
        S = random_spd(d, rng, cond=10.0)
        W = rng.standard_normal((d, q))
        mu = rng.standard_normal(d)
        x = mu + rng.standard_normal(d) * 2.0
        Hmax = np.linalg.eigvalsh(W.T @ np.linalg.solve(S, W)).max()
        L = Hmax * rng.uniform(1.3, 3.0)
        dz = latent_perturbation_matrix(W, S, L) @ (x - mu)
        dz_bf = brute_latent_inner(W, S, mu, x, L)
        errs["lemma2"] = max(errs["lemma2"], float(np.linalg.norm(dz_bf - dz) / np.linalg.norm(dz)))
        X = mu + rng.standard_normal((50, d)) @ np.linalg.cholesky(random_spd(d, rng, 5.0)).T
        M = latent_perturbation_matrix(W, S, L)
        M_bf = brute_latent_matrix(W, S, mu, X, L)
        errs["lemma6"] = max(errs["lemma6"], float(np.linalg.norm(M_bf - M) / np.linalg.norm(M)))
        Lp = rng.uniform(1.3, 3.0) / np.linalg.eigvalsh(S).min()
        dx = original_perturbation_matrix(S, Lp) @ (x - mu)
        dx_bf = brute_original_inner(S, mu, x, Lp)
        errs["original"] = max(errs["original"], float(np.linalg.norm(dx_bf - dx) / np.linalg.norm(dx)))
    return errs


# --------------------------------------------------------------------------- fixed points


def solve_fixed_point(F, lower: np.ndarray, start: np.ndarray, iters: int = 200) -> np.ndarray:
    """Solve ``m = F(m)`` coordinate-wise for ``m > lower`` where ``F`` is non-increasing, so the
    residual ``h(m) = m - F(m)`` is increasing with ``h(lower+) < 0``: bracket by doubling, then
    bisect in log-space to machine precision (vectorised over coordinates)."""
    lower = np.asarray(lower, dtype=np.float64)
    lo = np.where(lower > 0, lower, 0.0)
    hi = np.maximum(np.asarray(start, dtype=np.float64), lo * 2.0 + 1e-300) + 1e-300
    for _ in range(2100):
        bad = hi - F(hi) <= 0
        if not bad.any():
            break
        hi = np.where(bad, hi * 2.0, hi)
    lo = np.where(lo > 0, lo, np.minimum(hi * 1e-300, 1e-300))
    for _ in range(iters):
        mid = np.sqrt(lo * hi)
        mid = np.where((mid <= lo) | (mid >= hi), 0.5 * (lo + hi), mid)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = mid - F(mid)
        pos = h > 0
        hi = np.where(pos, mid, hi)
        lo = np.where(pos, lo, mid)
    with np.errstate(divide="ignore", invalid="ignore"):
        hl, hh = np.abs(lo - F(lo)), np.abs(hi - F(hi))
    return np.where(hl < hh, lo, hi)


def _max_rel_residual(m, Fm, interior) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        res = np.abs(m - Fm) / np.where(m > 0, m, 1.0)
    res = np.where(np.isfinite(res), res, np.inf)[interior]
    return float(res.max()) if res.size else 0.0


def fixed_point_latent(lam, q: int, L: float, strategy: int) -> dict:
    """Theorem 5 solved numerically from its fixed-point equation (not its root): the solution,
    its largest relative residual over interior roots and the count of boundary coordinates."""
    lam = as_spectrum(lam)
    sigma2, a = ppca(lam, q)
    Lam = strategy_spectrum(lam, q, strategy)
    lower = np.zeros_like(lam)
    lower[:q] = np.maximum(a, 0.0) / L

    def F(m):
        return latent_fixed_point_map(m, lam, q, L, strategy)

    ls = solve_fixed_point(F, lower, np.maximum(Lam, lam) + 1.0)
    # Coordinates with no perturbation (i > q) are F = Lam constant: exact.
    ls[q:] = Lam[q:]
    interior = np.zeros(lam.size, dtype=bool)
    interior[:q] = Lam[:q] > 0
    return {"solution": ls, "residual": _max_rel_residual(ls, F(ls), interior),
            "boundary": int(q - interior[:q].sum())}


def fixed_point_original(lam, Lp: float) -> dict:
    """Theorem 6 solved numerically from its fixed-point equation, as ``fixed_point_latent``. A
    coordinate without data (``lam_i = 0``) has no root: the optimum sits on the domain boundary
    1/L', where the Lagrangian is flat; the residual is over the interior roots."""
    lam = as_spectrum(lam)
    r = solve_fixed_point(lambda m: original_fixed_point_map(m, lam, Lp), np.full_like(lam, 1.0 / Lp), lam + 1.0)
    interior = lam > 0
    return {"solution": r, "residual": _max_rel_residual(r, original_fixed_point_map(r, lam, Lp), interior),
            "boundary": int((~interior).sum())}
