"""Adversarial training simulated: gradient descent-ascent on (mu, Sigma) from samples of
``N(mu*, Sigma*)``, the optimal perturbation recomputed at every step (exactly, or by gradient
ascent warm-started from the previous step), compared with Theorems 5, 6 and 9."""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import UsageError
from .closed_form import as_spectrum, ppca
from .gaussian import fit_ppca, population, rel_error, strategy_sample
from .saddle import finite_sample_saddle, latent_saddle, latent_saddle_general, original_saddle


def gradient_descent_ascent(
    inputs: np.ndarray,
    V: np.ndarray,
    W: np.ndarray | None,
    L: float,
    *,
    steps: int,
    lr: float,
    inner: str,
    inner_steps: int,
    tol: float = 1e-12,
) -> dict:
    """Gradient descent-ascent for ``min_{mu, Sigma} mean_x max_delta [l(x + delta) - L/2 |.|^2]``
    with ``Sigma = V diag(exp(rho)) V^T`` (the model restricted to the basis V, as in the paper).

    ``W is None``: original space, delta = dx; else latent, delta = W dz. Inner: ``exact`` uses the
    maximiser of the (concave, quadratic) per-sample Lagrangian for the current model, solved as a
    linear system from its first-order condition with the decoder expressed in the basis (a full
    d x q matrix); ``ascent`` takes ``inner_steps`` gradient-ascent steps of size 1/L from the
    previous step's perturbation. Outer (Danskin): a natural-gradient step on mu and a gradient
    step on rho; a coordinate's step halves whenever its gradient changes sign, and no step goes
    more than halfway to the domain boundary (where the Lagrangian stops being concave). Starts
    from standard training (sample mean and variances). Per-sample work is done in the basis
    coordinates with einsum (no multi-threaded BLAS on a shared machine).
    """
    N, d = inputs.shape
    Wm = np.eye(d) if W is None else W
    mu0 = inputs.mean(axis=0)
    Yall = np.einsum("nd,dk->nk", inputs - mu0, V)
    # decoder in basis coordinates, d x k; in the original space the perturbation itself is
    # written in the basis (the penalty |dx|^2 is rotation invariant), so it is exactly I
    Wt = np.eye(d) if W is None else V.T @ Wm
    k = Wt.shape[1]
    c = np.sum(Wt**2, axis=1) / L  # concavity needs exp(rho_i) > c_i
    var = np.mean(Yall**2, axis=0)
    # Directions the inputs never move in and the perturbation cannot reach carry no data:
    # the model's eigenvalue there is 0 (support convention) and they are left out.
    # Variance at round-off level (x' = A x for strategy 1, lam_i = 0) is exactly zero data.
    zero = var <= 1e-20 * float(var.max())
    Yall[:, zero] = 0.0
    var = np.where(zero, 0.0, var)
    active = (c > 1e-12 * max(float(c.max()), 1e-300)) | ~zero
    Y0, Wt, c, var = Yall[:, active], Wt[active], c[active], var[active]
    da = int(active.sum())
    m = np.zeros(da)  # model mean minus the input mean, basis coordinates
    rho = np.log(np.maximum(var, 2.0 * c + 1e-300))
    with np.errstate(divide="ignore"):
        bound = np.where(c > 0, np.log(np.where(c > 0, c, 1.0)), -np.inf)
    lr_rho = np.full(da, float(lr))
    prev_g = np.zeros(da)
    Dz = np.zeros((N, k))
    steps_done, gnorm = 0, math.inf
    for t in range(steps):
        lamm = np.exp(rho)
        Y = Y0 - m
        if inner == "exact":
            H = L * np.eye(k) - Wt.T @ (Wt / lamm[:, None])
            Mt = np.linalg.solve(H, Wt.T / lamm)  # k x da
            Dz = np.einsum("nd,kd->nk", Y, Mt)
        else:
            for _ in range(inner_steps):
                G = np.einsum("nd,dk->nk", (Y + np.einsum("nk,dk->nd", Dz, Wt)) / lamm, Wt) - L * Dz
                Dz = Dz + G / L
        R = Y + np.einsum("nk,dk->nd", Dz, Wt)
        g_rho = 0.5 - 0.5 * np.mean(R**2, axis=0) / lamm
        g_m_nat = R.mean(axis=0)
        lr_rho = np.where(g_rho * prev_g < 0, lr_rho * 0.5, lr_rho)
        prev_g = g_rho
        new = rho - np.clip(lr_rho * g_rho, -1.0, 1.0)  # at most a factor e per step
        rho = np.where(np.isfinite(bound), np.maximum(new, 0.5 * (rho + bound)), new)
        m = m + 0.5 * g_m_nat
        steps_done = t + 1
        # projected gradient: a coordinate pressed against the domain boundary (no data there,
        # the optimum is the boundary itself) does not count
        at_bound = (g_rho > 0) & (rho - bound < 1e-9)
        gnorm = float(np.sqrt(np.sum(np.where(at_bound, 0.0, g_rho) ** 2) + np.sum((g_m_nat / lamm) ** 2)))
        if gnorm < tol:
            break
    lam_out = np.zeros(d)
    lam_out[active] = np.exp(rho)
    return {"eigenvalues": lam_out, "mu": mu0 + V[:, active] @ m, "steps": steps_done, "grad_norm": gnorm}


def simulate(
    lam,
    q: int,
    L: float,
    Lp: float,
    strategy: int = 1,
    *,
    samples: int = 100_000,
    steps: int = 2000,
    lr: float = 0.5,
    inner: str = "exact",
    inner_steps: int = 5,
    n_fit: int | None = None,
    seed: int = 0,
    original: bool = True,
) -> dict:
    """Train the Gaussian classifier by gradient descent-ascent on samples of ``N(mu*, Sigma*)``
    (random rotation U and mean), (a) against the optimal original-space perturbation and
    (b) against the optimal latent-space perturbation through the P-PCA generator under
    ``strategy``, both recomputed at every step. Reports the learned eigenvalues (along the
    data's eigenvectors, decreasing) against Theorem 6 and Theorem 5 with relative errors, and
    against the same theorems evaluated at the sample's own second moments (what the
    optimisation should hit up to its tolerance).

    ``n_fit``: fit the generator and the model's eigenbasis to ``n_fit`` real samples instead of
    the population (strategy 3 only): the latent result is then compared with Theorem 9.
    ``original=False`` skips part (a) (its entry is then None).
    """
    if inner not in ("exact", "ascent"):
        raise UsageError(f"inner must be 'exact' or 'ascent', got {inner!r}")
    if samples < 10:
        raise UsageError(f"samples must be >= 10, got {samples}")
    if n_fit is not None and strategy != 3:
        raise UsageError("--n-fit (Theorem 9) is stated for strategy 3; use --strategy 3")
    if n_fit is not None and n_fit < 2:
        raise UsageError("--n-fit must be >= 2")
    lam = as_spectrum(lam)
    ppca(lam, q)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    pop = population(lam, rng)
    d = pop.d
    X = pop.sample(samples, rng)
    kw = dict(steps=steps, lr=lr, inner=inner, inner_steps=inner_steps)

    # (a) original space, model basis = the data's eigenvectors
    gen_pop = fit_ppca(pop.mu, pop.Sigma, q)
    V = gen_pop.V
    orig = None
    if original:
        res = gradient_descent_ascent(X, V, None, Lp, **kw)
        s_orig = np.mean(np.einsum("nd,dk->nk", X - X.mean(axis=0), V) ** 2, axis=0)
        orig = _against(res, pop.mu, "theorem6", original_saddle(lam, Lp), original_saddle(s_orig, Lp))

    # (b) latent space
    if n_fit is None:
        gen = gen_pop
        Xp = strategy_sample(gen, strategy, X, samples, rng)
        ref_lam = lam
    else:
        Xf = pop.sample(n_fit, rng)
        mu_hat = Xf.mean(axis=0)
        S_hat = (Xf - mu_hat).T @ (Xf - mu_hat) / n_fit
        gen = fit_ppca(mu_hat, S_hat, q)
        Xp = strategy_sample(gen, 3, None, samples, rng)
        ref_lam = as_spectrum(gen.w)
    Vg = gen.V
    res = gradient_descent_ascent(Xp, Vg, gen.W, L, **kw)
    s_lat = np.mean(np.einsum("nd,dk->nk", Xp - Xp.mean(axis=0), Vg) ** 2, axis=0)
    s_lat = np.where(s_lat > 1e-12 * s_lat.max(), s_lat, 0.0)  # strategy 1: nothing off span(W)
    a = np.sum((Vg.T @ gen.W) ** 2, axis=1)[:q]
    th5_sample = s_lat.copy()
    th5_sample[:q] = latent_saddle_general(s_lat[:q], a, L)
    lat = _against(res, pop.mu, "theorem5", latent_saddle(lam, q, L, strategy), th5_sample)
    out = {"d": d, "q": q, "L": L, "L_orig": Lp, "strategy": strategy, "samples": samples, "inner": inner,
           "eigenvalues": lam, "original": orig, "latent": lat}
    if n_fit is not None:
        th9 = finite_sample_saddle(ref_lam, q, L)
        out["n_fit"] = n_fit
        lat["sample_eigenvalues"] = ref_lam
        lat["theorem9"] = th9
        lat["rel_error_theorem9"] = rel_error(res["eigenvalues"], th9)
    out["wall_s"] = time.perf_counter() - t0
    return out


def _against(res: dict, mu_star, name: str, theorem, at_sample) -> dict:
    """A run of ``gradient_descent_ascent`` against a theorem (``name``), at the population and at
    the sample's own second moments (what the optimisation should hit up to its tolerance)."""
    learned = res["eigenvalues"]
    return {"learned": learned, name: theorem, "rel_error": rel_error(learned, theorem),
            f"{name}_at_sample": at_sample, "rel_error_at_sample": rel_error(learned, at_sample),
            "mean_error": float(np.max(np.abs(res["mu"] - mu_star))), "steps": res["steps"],
            "grad_norm": res["grad_norm"]}
