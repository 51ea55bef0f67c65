"""Nested numerical optimisation over covariances, independent of the closed forms: the min-max
of Theorems 5 and 6 (scipy, inner max over the perturbation matrix, outer min over the model
covariance in the data's eigenbasis or over all covariances), Ilyas et al.'s matrix form by
scipy's ``sqrtm``, and Theorem 8's mixed objective minimised over (mu, Sigma)."""

from __future__ import annotations

import math

import numpy as np

from .gaussian import eigh_desc, fit_ppca, population, strategy_covariance
from .saddle import original_saddle, original_saddle_matrix
from .solvers import matrix_lagrangian, minimize


class LogCholesky:
    """Unconstrained coordinates of an n x n covariance ``C C^T``: the lower triangle of the
    Cholesky factor ``C`` row by row, its diagonal as logarithms (so C stays invertible)."""

    def __init__(self, n: int):
        self.n = n
        self.tri = np.tril_indices(n)
        self.diag_pos = np.array([i for i, (r, c) in enumerate(zip(*self.tri)) if r == c])

    def factor(self, theta: np.ndarray) -> np.ndarray:
        C = np.zeros((self.n, self.n))
        C[self.tri] = theta
        C[np.diag_indices(self.n)] = np.exp(np.diag(C))
        return C

    def coordinates(self, S: np.ndarray) -> np.ndarray:
        theta = np.linalg.cholesky(S)[self.tri]
        theta[self.diag_pos] = np.log(theta[self.diag_pos])
        return theta

    def gradient(self, dS: np.ndarray, C: np.ndarray) -> np.ndarray:
        """The gradient in these coordinates from the symmetric gradient ``dS`` in ``C C^T``."""
        G = (2.0 * dS @ C)[self.tri]
        G[self.diag_pos] *= np.diag(C)
        return G


def brute_saddle(
    lam, q: int | None, L: float, strategy: int = 3, *, restrict: bool = True, seed: int = 0
) -> dict:
    """Solve ``min_Sigma max_B E[l(x' + W B (x' - mu*)) - L/2 |B (x' - mu*)|^2]`` numerically, the
    expectation exact over ``x' ~ N(mu*, S_j)`` (``S_j`` from ``strategy_covariance``), the model
    mean held at ``mu*``. ``q=None`` is the original-space problem (W = I, S_j = Sigma*, L = L').

    The inner max over the matrix B is scipy L-BFGS; the outer min over ``Sigma`` (log-eigenvalues
    in the data's eigenbasis if ``restrict``, else a full Cholesky factor: any covariance) is
    scipy BFGS with the Danskin gradient at the numerical maximiser. Directions where ``x'`` has
    no mass and W does not reach (strategy 1, i > q) are dropped: there the optimum is the
    degenerate ``Sigma_ii = 0`` (support convention). Returns the optimum's eigenvalues
    (decreasing), its diagonal in the data's eigenbasis (the entries Theorems 5/6 give), its
    largest off-diagonal entry there relative to its largest eigenvalue, and the optimiser's
    final gradient norm.
    """
    rng = np.random.default_rng(seed)
    pop = population(lam, rng)
    d = pop.d
    Sstar = pop.Sigma
    if q is None:
        W, Sj = np.eye(d), Sstar
    else:
        gen = fit_ppca(pop.mu, Sstar, q)
        W, Sj = gen.W, strategy_covariance(gen, Sstar, strategy)
    # support of the problem
    U = pop.U
    if restrict:
        reach = np.einsum("ij,jk,ki->i", U.T, Sj, U) + np.sum((U.T @ W) ** 2, axis=1)
        keep = reach > 1e-12 * reach.max()
        Q = U[:, keep]
    else:
        w_s, V_s = eigh_desc(Sj + W @ W.T)
        Q = V_s[:, w_s > 1e-12 * w_s.max()]
    n = Q.shape[1]
    Wq, Sq = Q.T @ W, Q.T @ Sj @ Q
    Uq = Q.T @ U[:, keep] if restrict else None
    k = W.shape[1]
    B_warm = [np.zeros((k, n))]

    def inner(Sigma):
        Si = np.linalg.inv(Sigma)
        res = minimize(matrix_lagrangian(Wq, Si, Sq, L), B_warm[0].ravel(), jac=True, method="L-BFGS-B",
                       options={"gtol": 1e-13, "ftol": 1e-16, "maxiter": 10000})
        B = res.x.reshape(k, n)
        B_warm[0] = B
        A = np.eye(n) + Wq @ B
        K = A @ Sq @ A.T
        val = 0.5 * np.linalg.slogdet(Sigma)[1] - res.fun
        dS = 0.5 * Si - 0.5 * Si @ K @ Si  # Danskin: d/dSigma at the maximiser
        return val, dS

    def concave(Sigma):
        try:
            H = Wq.T @ np.linalg.solve(Sigma, Wq)
            return bool(np.linalg.eigvalsh(0.5 * (H + H.T)).max() < L)
        except np.linalg.LinAlgError:
            return False

    chol = LogCholesky(n)

    def build(theta):
        if restrict:
            return (Uq * np.exp(theta)) @ Uq.T
        C = chol.factor(theta)
        return C @ C.T

    def fun(theta):
        if not np.all(np.isfinite(theta)) or np.max(np.abs(theta)) > 700:
            return 1e6 + float(np.sum(np.nan_to_num(theta) ** 2)), -np.nan_to_num(theta)
        Sigma = build(theta)
        if not concave(Sigma):
            return 1e6 + float(np.sum(theta**2)), -theta  # outside the domain: push back
        val, dS = inner(Sigma)
        if restrict:
            return val, np.einsum("ij,jk,ki->i", Uq.T, dS, Uq) * np.exp(theta)
        return val, chol.gradient(dS, chol.factor(theta))

    # start from the standard-training solution pushed inside the domain
    S0 = Sq + (2.0 * np.max(np.sum(Wq**2, axis=0)) / L + 1e-3 * np.trace(Sq) / n) * np.eye(n)
    if restrict:
        theta0 = np.log(np.einsum("ij,jk,ki->i", Uq.T, S0, Uq))
    else:
        theta0 = chol.coordinates(S0)
    res = minimize(fun, theta0, jac=True, method="BFGS", options={"gtol": 1e-11, "maxiter": 3000})
    Sigma = Q @ build(res.x) @ Q.T
    w, _ = eigh_desc(Sigma)
    w = np.where(np.abs(w) <= 1e-12 * w.max(), 0.0, w)
    inU = U.T @ Sigma @ U
    off_diag = float(np.max(np.abs(inU - np.diag(np.diag(inU))))) / float(w.max())
    return {
        "eigenvalues": w,
        "in_data_basis": np.diag(inU).copy(),
        "off_diagonal": off_diag,
        "grad_norm": float(np.linalg.norm(res.jac)),
        "iterations": int(res.nit),
    }


def ilyas_matrix_form(lam, Lp: float, seed: int = 0) -> dict:
    """Theorem 6 against Ilyas et al.'s matrix statement for a random non-diagonal ``Sigma*``:
    ``Sigma*/2 + I/L' + sqrtm(Sigma*/L' + Sigma*^2/4)`` with scipy's ``sqrtm`` versus
    ``U diag(lam_r) U^T``; returns the largest relative entry difference."""
    from scipy import linalg as sla

    rng = np.random.default_rng(seed)
    pop = population(lam, rng)
    S = pop.Sigma
    ref = S / 2.0 + np.eye(pop.d) / Lp + np.real(sla.sqrtm(S / Lp + S @ S / 4.0))
    ours = (pop.U * original_saddle(pop.lam, Lp)) @ pop.U.T
    return {"max_rel_diff": float(np.max(np.abs(ref - ours)) / np.max(np.abs(ref))),
            "matrix_fn_diff": float(np.max(np.abs(original_saddle_matrix(S, Lp) - ref)) / np.max(np.abs(ref)))}


def augmentation_check(lam, q: int, n: int, m: int, seed: int = 0) -> dict:
    """Theorem 8 numerically. Draw n real samples, fit mean/MLE covariance and P-PCA to them, then
    minimise ``n/(n+m) mean_i l(x_i) + m/(n+m) E_{x ~ generator} l(x)`` over (mu, Sigma) with scipy
    (full Cholesky parametrisation, the expectation exact). Also the covariance MLE of the n real
    samples pooled with m actual generated samples (Monte Carlo of the finite-m case)."""
    rng = np.random.default_rng(seed)
    pop = population(lam, rng)
    d = pop.d
    X = pop.sample(n, rng)
    mu_hat = X.mean(axis=0)
    S = (X - mu_hat).T @ (X - mu_hat) / n
    gen = fit_ppca(mu_hat, S, q)
    S_gen = gen.W @ gen.W.T + gen.sigma2 * np.eye(d)
    wr, wg = n / (n + m), m / (n + m)
    chol = LogCholesky(d)

    def fun(theta):
        mu, C = theta[:d], chol.factor(theta[d:])
        Sigma = C @ C.T
        Si = np.linalg.inv(Sigma)
        D = X - mu
        real = 0.5 * np.mean(np.einsum("ni,ij,nj->n", D, Si, D))
        e = mu_hat - mu
        gen_part = 0.5 * np.trace(Si @ S_gen) + 0.5 * e @ Si @ e
        val = 0.5 * np.linalg.slogdet(Sigma)[1] + wr * real + wg * gen_part
        # gradients
        K = wr * (D.T @ D / n) + wg * (S_gen + np.outer(e, e))
        dS = 0.5 * Si - 0.5 * Si @ K @ Si
        g_mu = -Si @ (wr * D.mean(axis=0) + wg * e)
        return val, np.concatenate([g_mu, chol.gradient(dS, C)])

    theta0 = np.concatenate([np.zeros(d), chol.coordinates(np.cov(X.T) + np.eye(d))])
    res = minimize(fun, theta0, jac=True, method="BFGS", options={"gtol": 1e-12, "maxiter": 5000})
    mu_opt, C = res.x[:d], chol.factor(res.x[d:])
    w_opt, _ = eigh_desc(C @ C.T)
    Xg = gen.decode_mean(rng.standard_normal((m, q))) + math.sqrt(gen.sigma2) * rng.standard_normal((m, d)) if m else np.zeros((0, d))
    pooled = np.vstack([X, Xg])
    mp = pooled.mean(axis=0)
    w_pool, _ = eigh_desc((pooled - mp).T @ (pooled - mp) / pooled.shape[0])
    return {
        "sample_eigenvalues": gen.w,
        "numerical": w_opt,
        "mean_error": float(np.max(np.abs(mu_opt - mu_hat))),
        "generated_samples": w_pool,
        "grad_norm": float(np.linalg.norm(res.jac)),
    }
