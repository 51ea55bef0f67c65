"""Saddle points of adversarial training in closed form: Theorems 5 and 6 (with their fixed-point
maps and Ilyas et al.'s matrix form) and appendix C (Theorems 8 and 9). Notation and
conventions: ``closed_form``."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .closed_form import check_q, multiplier, ppca, strategy_spectrum


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
    Lb = multiplier(L)
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
    Lb = multiplier(L)
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
    Lb = multiplier(Lp, "L'")
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


def amplification(lam_model, lam) -> np.ndarray:
    """``lam_model / lam`` per eigenvalue (the trained model's amplification), NaN where ``lam = 0``."""
    num, lam = np.asarray(lam_model, dtype=np.float64), np.asarray(lam, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lam > 0, num / np.where(lam > 0, lam, 1.0), np.nan)


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
    q = check_q(lam, q)
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
