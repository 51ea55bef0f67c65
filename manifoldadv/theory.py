"""The Gaussian-mixture theory of section 4 and appendices A and C, in closed form.

Spec: ``THEORY.md`` (a clean restatement of the paper; the paper's PDF text has garbled
formulas and two misstatements, both kept here beside the correct form).

Everything here is pure: float64 numpy, no I/O, no randomness. A *spectrum* is the vector of
eigenvalues ``lam`` of the data covariance ``Sigma* = U diag(lam) U^T``, sorted in decreasing
order (``as_spectrum`` sorts and validates). Per-eigenvalue results are vectorised over the
last axis; Lagrange multipliers ``L`` / ``Lp`` (the paper's L and L') may be arrays, in which
case results get ``L``'s shape in front (``L[..., None]`` is broadcast against ``lam``).

Notation (THEORY.md):

- ``q``: latent dimension of probabilistic PCA, ``sigma2 = mean(lam[q:])`` (0 when ``q = d``),
  ``a_i = lam_i - sigma2`` for ``i <= q`` (the signal variance the generator keeps).
- ``strategy`` j in {1, 2, 3}: how a latent-space adversarial example is made (Lemma 1); every
  strategy gives ``x_adv = x' + W dz`` with ``x' ~ D_j = N(mu*, U diag(Lambda^(j)) U^T)``.
- Losses are the Gaussian negative log-likelihood of the classifier ``Theta = (mu, Sigma)``.

Support convention. When ``lam_i = 0`` (data on a lower-dimensional subspace) the loss is the
log-density of the degenerate Gaussian on its support: a coordinate with ``lam_i = 0`` and no
mass in ``D_j`` (``Lambda^(j)_i = 0``) contributes nothing, one with mass off the support
(``Lambda^(j)_i > 0``) makes the loss ``+inf``. Where the Lagrangian inner maximisation is
unbounded (penalty too weak for the curvature) the excess risk is ``+inf``.
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError

STRATEGIES = (1, 2, 3)

__all__ = [
    "STRATEGIES",
    "as_spectrum",
    "ppca",
    "ppca_matrices",
    "strategy_spectrum",
    "strategy_spectra",
    "latent_gain",
    "latent_excess_perturbation",
    "latent_excess_change",
    "latent_excess_change_paper",
    "latent_excess_risk",
    "corollary3",
    "original_gain",
    "original_excess_risk",
    "original_excess_bounds",
    "latent_saddle",
    "latent_saddle_general",
    "latent_fixed_point_map",
    "original_saddle",
    "original_fixed_point_map",
    "rank_q_latent_ratio",
    "latent_perturbation_matrix",
    "original_perturbation_matrix",
    "original_saddle_matrix",
    "augmentation",
    "finite_sample_saddle",
]


# --------------------------------------------------------------------------- spectra


def as_spectrum(lam, *, rtol: float | None = None) -> np.ndarray:
    """Validate eigenvalues: 1-D, finite, non-negative; return them float64, sorted decreasing.

    Round-off negatives from an eigensolver (``|lam_i| <= rtol * max(lam)``, default
    ``rtol = 10 * d * eps``) and positives that small are set to exactly 0, so that a
    rank-deficient covariance has exact zeros.
    """
    x = np.asarray(lam, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise UsageError(f"a spectrum is a non-empty 1-D list of eigenvalues, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise UsageError("eigenvalues must be finite")
    top = float(np.max(np.abs(x)))
    if top == 0.0:
        raise UsageError("all eigenvalues are zero")
    tol = (10.0 * x.size * np.finfo(np.float64).eps if rtol is None else rtol) * top
    if np.any(x < -tol):
        raise UsageError(f"eigenvalues must be >= 0 (a covariance), got min {x.min():.3g}")
    x = np.where(np.abs(x) <= tol, 0.0, x)
    return np.sort(x)[::-1].copy()


def _check_q(lam: np.ndarray, q: int) -> int:
    d = lam.shape[-1]
    q = int(q)
    if not 1 <= q <= d:
        raise UsageError(f"q must be in [1, d={d}], got {q}")
    if lam[q - 1] <= 0:
        raise UsageError(f"q={q} exceeds the rank of the spectrum ({int(np.sum(lam > 0))})")
    return q


def _check_strategy(strategy: int) -> int:
    if int(strategy) not in STRATEGIES:
        raise UsageError(f"strategy must be 1, 2 or 3, got {strategy}")
    return int(strategy)


def _mult(L, name: str = "L") -> np.ndarray:
    arr = np.asarray(L, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise UsageError(f"the Lagrange multiplier {name} must be finite and > 0")
    return arr[..., None]


# --------------------------------------------------------------------------- P-PCA


def ppca(lam, q: int) -> tuple[float, np.ndarray]:
    """Probabilistic PCA (Tipping & Bishop 1999; section 4.1) in the eigenbasis.

    ``sigma2 = mean(lam_{q+1..d})`` (0 when q = d) and ``a = lam_{1..q} - sigma2``, so that
    ``W = U_q diag(sqrt(a))`` and ``P = W^T W + sigma2 I = diag(lam_{1..q})``.
    Returns ``(sigma2, a)`` with ``a`` of length q.
    """
    lam = np.asarray(lam, dtype=np.float64)
    q = _check_q(lam, q)
    sigma2 = float(np.mean(lam[q:])) if q < lam.shape[-1] else 0.0
    return sigma2, lam[:q] - sigma2


def ppca_matrices(U, lam, q: int) -> tuple[np.ndarray, float]:
    """The P-PCA decoder ``W = U_q (Lambda_q - sigma2 I)^(1/2)`` (d x q) and ``sigma2``."""
    sigma2, a = ppca(lam, q)
    U = np.asarray(U, dtype=np.float64)
    return U[:, :q] * np.sqrt(np.maximum(a, 0.0)), sigma2


# --------------------------------------------------------------------------- Lemma 1


def strategy_spectrum(lam, q: int, strategy: int) -> np.ndarray:
    """Lemma 1: ``x' ~ D_j = N(mu*, U diag(Lambda^(j)) U^T)``; returns ``Lambda^(j)``.

    - j = 1 (encode mean, decode mean): ``(lam_i - s2)^2 / lam_i`` for i <= q, 0 for i > q
    - j = 2 (sample z|x, sample x|z):  ``(lam_i - s2)^2/lam_i + (lam_i - s2) s2/lam_i + s2``
      for i <= q, ``s2`` for i > q. The first expression equals ``lam_i`` exactly (the paper
      does not say so), hence ``Lambda^(2) = Lambda^(3)``; it is evaluated as written.
    - j = 3 (sample z ~ N(0, I), sample x|z): ``lam_i`` for i <= q, ``s2`` for i > q
    with ``s2 = sigma2`` of P-PCA. For rank-q data (s2 = 0) all three equal ``lam``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    strategy = _check_strategy(strategy)
    sigma2, a = ppca(lam, q)
    lq = lam[:q]
    out = np.empty_like(lam)
    if strategy == 1:
        out[:q] = a**2 / lq
        out[q:] = 0.0
    elif strategy == 2:
        out[:q] = a**2 / lq + a * sigma2 / lq + sigma2
        out[q:] = sigma2
    else:
        out[:q] = lq
        out[q:] = sigma2
    return out


def strategy_spectra(lam, q: int) -> np.ndarray:
    """``[Lambda^(1), Lambda^(2), Lambda^(3)]`` stacked, shape (3, d) (Lemma 1)."""
    return np.stack([strategy_spectrum(lam, q, j) for j in STRATEGIES])


# --------------------------------------------------------------------------- Theorem 2, Corollary 3


def latent_gain(lam, q: int, L) -> np.ndarray:
    """Lemma 2 in the eigenbasis at ``Theta*``: the optimal latent perturbation
    ``dz* = W^T (L Sigma* - W W^T)^-1 (x' - mu*)`` maps coordinate i of ``x' - mu*`` to
    ``f_i`` times itself, ``f_i = 1 + (lam_i - s2) / ((L - 1) lam_i + s2)`` for i <= q and
    ``f_i = 1`` for i > q. ``f_i = +inf`` where the inner problem is unbounded
    (``L lam_i <= a_i`` with ``a_i > 0``).
    """
    return 1.0 + _latent_gain_excess(lam, q, L)


def _latent_gain_excess(lam, q: int, L) -> np.ndarray:
    """``f_i - 1`` computed directly (no cancellation at large L)."""
    lam = np.asarray(lam, dtype=np.float64)
    Lb = _mult(L)
    sigma2, a = ppca(lam, q)
    den = Lb * lam[:q] - a  # = (L - 1) lam_i + sigma2
    with np.errstate(divide="ignore", invalid="ignore"):
        gq = np.where(a > 0, np.where(den > 0, a / np.where(den > 0, den, 1.0), np.inf), 0.0)
    g = np.zeros(np.broadcast_shapes(Lb.shape, lam.shape))
    g[..., :q] = gq
    return g


def _support_ratio(Lam: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``Lam_i / lam_i - 1`` with the support convention (0 for 0/0, +inf for x/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(lam > 0, Lam / np.where(lam > 0, lam, 1.0) - 1.0, np.where(Lam > 0, np.inf, 0.0))
    return r


def latent_excess_perturbation(lam, q: int, L, strategy: int) -> np.ndarray:
    """Theorem 2, perturbation part (model held at ``Theta*``):

    ``L_ls(Theta*, D_j) - L(Theta*, D_j) = 1/2 sum_{i<=q} (f_i^2 - 1) Lambda^(j)_i / lam_i``
    with ``f_i`` from ``latent_gain``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    Lam = strategy_spectrum(lam, q, strategy)
    g = _latent_gain_excess(lam, q, L)[..., :q]  # f - 1
    w = Lam[:q] / lam[:q]
    # f^2 - 1 = g (2 + g) avoids cancellation at large L. Where f is infinite the Lagrangian is
    # unbounded, even along a coordinate x' leaves at 0.
    with np.errstate(invalid="ignore"):
        terms = np.where(np.isinf(g), np.inf, g * (2.0 + g) * w)
    return 0.5 * np.sum(terms, axis=-1)


def latent_excess_change(lam, q: int, strategy: int) -> float:
    """Theorem 2, change-of-distribution part, correct form (THEORY.md):

    ``L(Theta*, D_j) - L(Theta*, D) = 1/2 (sum_i Lambda^(j)_i / lam_i - d)``.

    The model, hence its log-determinant, is held at ``Theta*``, so no log term appears.
    """
    lam = np.asarray(lam, dtype=np.float64)
    Lam = strategy_spectrum(lam, q, strategy)
    return float(0.5 * np.sum(_support_ratio(Lam, lam)))


def latent_excess_change_paper(lam, q: int, strategy: int) -> float:
    """Theorem 2, change-of-distribution part as the paper states it (a misstatement):

    ``1/2 log(prod_i Lambda^(j)_i / prod_i lam_i) + 1/2 (sum_i Lambda^(j)_i / lam_i - d)``.

    The log term is the data's log-determinant ratio; with the model fixed at ``Theta*`` it
    cancels. It is ``-inf`` under strategy 1 with q < d and full-rank data.
    """
    lam = np.asarray(lam, dtype=np.float64)
    Lam = strategy_spectrum(lam, q, strategy)
    both0 = (Lam == 0) & (lam == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(both0, 0.0, np.log(Lam) - np.log(lam))
    if np.any(np.isposinf(logs)) and np.any(np.isneginf(logs)):
        log_term = np.nan
    else:
        log_term = float(np.sum(logs))
    return 0.5 * log_term + latent_excess_change(lam, q, strategy)


def latent_excess_risk(lam, q: int, L, strategy: int) -> np.ndarray:
    """Theorem 2, total: ``L_ls(Theta*, D_j) - L(Theta*, D)`` = perturbation + change parts."""
    return latent_excess_perturbation(lam, q, L, strategy) + latent_excess_change(lam, q, strategy)


def corollary3(q: int, L) -> np.ndarray:
    """Corollary 3 (rank(Sigma*) = q, so sigma2 = 0, Lambda^(j) = lam and f_i = L/(L-1)):

    ``L_ls(Theta*, D_j) - L(Theta*, D) = q/2 ((L/(L-1))^2 - 1) = q (2L - 1) / (2 (L - 1)^2)``.

    Exact for L > 1 (``+inf`` for L <= 1). It decays like ``q / L``; the paper states
    ``O(q L^-2)``.
    """
    Lb = np.asarray(L, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(Lb > 1, q * (2.0 * Lb - 1.0) / (2.0 * (Lb - 1.0) ** 2), np.inf)


# --------------------------------------------------------------------------- Theorem 4


def original_gain(lam, Lp) -> np.ndarray:
    """The optimal original-space perturbation ``dx* = (L' Sigma* - I)^-1 (x - mu*)`` maps
    coordinate i of ``x - mu*`` to ``1 + 1/(L' lam_i - 1)`` times itself (``+inf`` where
    ``L' lam_i <= 1``: the Lagrangian is unbounded there).
    """
    lam = np.asarray(lam, dtype=np.float64)
    x = _mult(Lp, "L'") * lam
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 1, 1.0 + 1.0 / np.where(x > 1, x - 1.0, 1.0), np.inf)


def original_excess_risk(lam, Lp) -> np.ndarray:
    """Theorem 4, exact value (model held at ``Theta*``):

    ``L_r(Theta*, D) - L(Theta*, D) = 1/2 sum_{i=1..d} ((1 + 1/(L' lam_i - 1))^2 - 1)``
    ``= 1/2 sum_i (2 L' lam_i - 1) / (L' lam_i - 1)^2``.

    Requires ``L' lam_min > 1``; otherwise (in particular when ``lam_min = 0``: data on a
    manifold) the inner supremum, hence the excess risk, is ``+inf``. Each term behaves like
    ``1/(L' lam_i)`` for large ``L' lam_i``: the value decays like ``1/L'``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    x = _mult(Lp, "L'") * lam
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(x > 1, (2.0 * x - 1.0) / np.where(x > 1, x - 1.0, 1.0) ** 2, np.inf)
    return 0.5 * np.sum(terms, axis=-1)


def original_excess_bounds(lam, Lp) -> dict:
    """Theorem 4's bounds. The paper's proof gives the exact inequalities

    ``t(lam_min)/2 <= value <= d t(lam_min)/2``, ``t(l) = (1 + 1/(L' l - 1))^2 - 1``

    (``lower_bound``/``upper_bound``, both true), then claims ``t(lam_min) = Theta((L' lam_min)^-2)``,
    i.e. ``Omega((lam_min L')^-2) <= value <= O(d (lam_min L')^-2)``. But
    ``t(l) = (2 L' l - 1)/(L' l - 1)^2 ~ 2/(L' l)``: the stated orders are off by one power
    (``paper_order_lower``/``paper_order_upper`` give them with unit constants).
    """
    lam = np.asarray(lam, dtype=np.float64)
    lmin = lam.min()
    g = original_gain(np.array([lmin]), Lp)[..., 0]
    t = g**2 - 1.0
    Lb = np.asarray(Lp, dtype=np.float64)
    with np.errstate(divide="ignore"):
        order = 1.0 / (lmin * Lb) ** 2
    return {
        "lower_bound": 0.5 * t,
        "upper_bound": 0.5 * lam.shape[-1] * t,
        "paper_order_lower": order,
        "paper_order_upper": lam.shape[-1] * order,
    }


# --------------------------------------------------------------------------- Theorems 5, 6


def latent_saddle(lam, q: int, L, strategy: int) -> np.ndarray:
    """Theorem 5 (optimal saddle point of latent-space adversarial training, model restricted
    to the data's eigenbasis): ``mu_ls = mu*``, ``Sigma_ls = U diag(lam_ls) U^T`` with

    ``lam_ls_i = 1/4 (2 Lam_i + 4 a_i / L + 2 Lam_i sqrt(1 + 4 a_i / (L Lam_i)))`` for i <= q
    ``lam_ls_i = Lam_i`` for i > q,

    ``Lam = Lambda^(j)``, ``a_i = lam_i - sigma2``. Evaluated as the equal
    ``Lam/2 + a/L + sqrt(Lam^2/4 + a Lam / L)``, which is also right for ``Lam_i = 0``. It is the
    positive root of the fixed point ``lam = Lam (1 + a/(L lam - a))^2``
    (``latent_fixed_point_map``).
    """
    lam = np.asarray(lam, dtype=np.float64)
    Lb = _mult(L)
    Lam = strategy_spectrum(lam, q, strategy)
    sigma2, a = ppca(lam, q)
    out = np.broadcast_to(Lam, np.broadcast_shapes(Lb.shape, lam.shape)).copy()
    out[..., :q] = latent_saddle_general(Lam[:q], a, L)
    return out


def latent_saddle_general(Lam, a, L) -> np.ndarray:
    """Theorem 5's root for given second moments ``Lam`` of ``x'`` along the generator's
    directions and signal variances ``a`` (used with sample moments, Theorem 9):
    ``Lam/2 + a/L + sqrt(Lam^2/4 + a Lam/L)``, the root of ``m = Lam (1 + a/(L m - a))^2``."""
    Lam = np.asarray(Lam, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    Lb = _mult(L)
    return Lam / 2.0 + a / Lb + np.sqrt(Lam**2 / 4.0 + a * Lam / Lb)


def latent_fixed_point_map(lam_model, lam, q: int, L, strategy: int) -> np.ndarray:
    """The map whose fixed point is Theorem 5 (appendix A.1.2, first-order condition with the
    inner maximiser plugged in, Danskin): ``F(m)_i = Lam_i (1 + a_i / (L m_i - a_i))^2`` for
    i <= q, ``Lam_i`` for i > q; ``m`` is the model's eigenvalue vector."""
    lam = np.asarray(lam, dtype=np.float64)
    m = np.asarray(lam_model, dtype=np.float64)
    Lam = strategy_spectrum(lam, q, strategy)
    sigma2, a = ppca(lam, q)
    Lb = np.asarray(L, dtype=np.float64)
    out = Lam.copy() * np.ones_like(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[..., :q] = Lam[:q] * (1.0 + a / (Lb * m[..., :q] - a)) ** 2
    return out


def original_saddle(lam, Lp) -> np.ndarray:
    """Theorem 6 (Ilyas et al. 2019, Theorem 2): ``mu_r = mu*``,
    ``Sigma_r = Sigma*/2 + I/L' + (Sigma*/L' + Sigma*^2/4)^(1/2)``; per eigenvalue

    ``lam_r_i = lam_i/2 + 1/L' + sqrt(lam_i/L' + lam_i^2/4)``,

    the positive root of ``lam = lam_i (1 + 1/(L' lam - 1))^2`` with ``L' lam > 1``. The ratio
    ``lam_r/lam = 1/2 + 1/(L' lam) + sqrt(1/4 + 1/(L' lam))`` is largest for small ``lam``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    Lb = _mult(Lp, "L'")
    return lam / 2.0 + 1.0 / Lb + np.sqrt(lam / Lb + lam**2 / 4.0)


def original_fixed_point_map(lam_model, lam, Lp) -> np.ndarray:
    """``F(m)_i = lam_i (1 + 1/(L' m_i - 1))^2``: Theorem 6's first-order condition."""
    m = np.asarray(lam_model, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(lam, dtype=np.float64) * (1.0 + 1.0 / (float(Lp) * m - 1.0)) ** 2


def rank_q_latent_ratio(L) -> np.ndarray:
    """Theorem 5 for rank-q data: ``lam_ls_i / lam_i = 1/2 + 1/L + sqrt(1/4 + 1/L) >= 1``
    for i <= q, whatever the eigenvalues (and ``lam_ls_i = lam_i = 0`` for i > q)."""
    Lb = np.asarray(L, dtype=np.float64)
    return 0.5 + 1.0 / Lb + np.sqrt(0.25 + 1.0 / Lb)


# --------------------------------------------------------------------------- matrix forms


def latent_perturbation_matrix(W, Sigma, L) -> np.ndarray:
    """Lemma 2 / Lemma 6: the maximiser of ``l(x' + W dz; mu, Sigma) - L/2 |dz|^2`` is
    ``dz* = M (x' - mu)`` with ``M = W^T (L Sigma - W W^T)^-1`` (q x d), for any model
    ``Sigma`` and decoder ``W`` with ``L > lambda_max(W^T Sigma^-1 W)`` (concavity)."""
    W = np.asarray(W, dtype=np.float64)
    S = np.asarray(Sigma, dtype=np.float64)
    return np.linalg.solve((float(L) * S - W @ W.T).T, W).T


def original_perturbation_matrix(Sigma, Lp) -> np.ndarray:
    """Theorem 4's proof: the maximiser of ``l(x + dx; mu, Sigma) - L'/2 |dx|^2`` is
    ``dx* = (L' Sigma - I)^-1 (x - mu)``, for ``L' lambda_min(Sigma) > 1``."""
    S = np.asarray(Sigma, dtype=np.float64)
    return np.linalg.inv(float(Lp) * S - np.eye(S.shape[0]))


def original_saddle_matrix(Sigma_star, Lp) -> np.ndarray:
    """Theorem 6 in matrix form (Ilyas et al. 2019, Theorem 2):
    ``Sigma_r = Sigma*/2 + I/L' + (Sigma*/L' + Sigma*^2/4)^(1/2)`` (PSD square root by eigh)."""
    S = np.asarray(Sigma_star, dtype=np.float64)
    S = 0.5 * (S + S.T)
    inner = S / float(Lp) + S @ S / 4.0
    w, V = np.linalg.eigh(0.5 * (inner + inner.T))
    root = (V * np.sqrt(np.maximum(w, 0.0))) @ V.T
    return S / 2.0 + np.eye(S.shape[0]) / float(Lp) + root


# --------------------------------------------------------------------------- Appendix C


def augmentation(lam_hat, q: int, n: int, m: int) -> np.ndarray:
    """Theorem 8 (training on n real samples and m samples of the P-PCA fitted to them, the
    generated part in expectation): ``mu_da = mu_hat``, ``Sigma_da = U_hat diag(lam_da) U_hat^T``,

    ``lam_da_i = lam_i`` for i <= q,
    ``lam_da_i = n/(n+m) lam_i + m/((n+m)(d-q)) sum_{k>q} lam_k`` for i > q,

    with ``lam`` the eigenvalues of the MLE covariance (1/n) of the real samples.
    """
    lam = np.asarray(lam_hat, dtype=np.float64)
    n, m = int(n), int(m)
    if n < 1 or m < 0:
        raise UsageError(f"need n >= 1 and m >= 0, got n={n}, m={m}")
    q = _check_q(lam, q)
    out = lam.copy()
    d = lam.shape[-1]
    if q < d:
        out[q:] = n / (n + m) * lam[q:] + m / ((n + m) * (d - q)) * np.sum(lam[q:])
    return out


def finite_sample_saddle(lam_hat, q: int, L) -> np.ndarray:
    """Theorem 9: with finite samples, latent adversarial training under strategy 3 with the
    P-PCA fitted to the sample has the Theorem 5 solution with the sample eigenvalues
    ``lam_hat`` in place of the true ones (and the sample eigenvectors and mean)."""
    return latent_saddle(lam_hat, q, L, 3)
