"""The Gaussian-mixture theory of section 4 and appendix A in closed form: spectra, probabilistic
PCA, Lemma 1's strategies and the optimal perturbations (Lemmas 2 and 6, Theorem 4's proof).

Spec: ``THEORY.md`` (a clean restatement of the paper; the paper's PDF text has garbled
formulas and two misstatements, both kept beside the correct form in ``excess_risk``).

Everything in ``closed_form``, ``excess_risk`` and ``saddle`` is pure: float64 numpy, no I/O, no
randomness. A *spectrum* is the vector of eigenvalues ``lam`` of the data covariance
``Sigma* = U diag(lam) U^T``, sorted in decreasing order (``as_spectrum`` sorts and validates).
Per-eigenvalue results are vectorised over the last axis; Lagrange multipliers ``L`` / ``Lp``
(the paper's L and L') may be arrays, in which case results get ``L``'s shape in front
(``L[..., None]`` is broadcast against ``lam``).

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

from ..errors import UsageError

STRATEGIES = (1, 2, 3)


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


def check_q(lam: np.ndarray, q: int) -> int:
    """``q`` as an int in ``[1, d]`` and within the rank of ``lam`` (P-PCA needs ``lam_q > 0``)."""
    d = lam.shape[-1]
    q = int(q)
    if not 1 <= q <= d:
        raise UsageError(f"q must be in [1, d={d}], got {q}")
    if lam[q - 1] <= 0:
        raise UsageError(f"q={q} exceeds the rank of the spectrum ({int(np.sum(lam > 0))})")
    return q


def check_strategy(strategy: int) -> int:
    if int(strategy) not in STRATEGIES:
        raise UsageError(f"strategy must be 1, 2 or 3, got {strategy}")
    return int(strategy)


def multiplier(L, name: str = "L") -> np.ndarray:
    """A Lagrange multiplier (scalar or array), checked finite and > 0, shaped ``L[..., None]``."""
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
    q = check_q(lam, q)
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
    strategy = check_strategy(strategy)
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


# --------------------------------------------------------------------------- optimal perturbations


def latent_gain(lam, q: int, L) -> np.ndarray:
    """Lemma 2 in the eigenbasis at ``Theta*``: the optimal latent perturbation
    ``dz* = W^T (L Sigma* - W W^T)^-1 (x' - mu*)`` maps coordinate i of ``x' - mu*`` to
    ``f_i`` times itself, ``f_i = 1 + (lam_i - s2) / ((L - 1) lam_i + s2)`` for i <= q and
    ``f_i = 1`` for i > q. ``f_i = +inf`` where the inner problem is unbounded
    (``L lam_i <= a_i`` with ``a_i > 0``).
    """
    return 1.0 + latent_gain_increment(lam, q, L)


def latent_gain_increment(lam, q: int, L) -> np.ndarray:
    """``f_i - 1`` computed directly: ``latent_gain`` loses it to cancellation at large L."""
    lam = np.asarray(lam, dtype=np.float64)
    Lb = multiplier(L)
    sigma2, a = ppca(lam, q)
    den = Lb * lam[:q] - a  # = (L - 1) lam_i + sigma2
    with np.errstate(divide="ignore", invalid="ignore"):
        gq = np.where(a > 0, np.where(den > 0, a / np.where(den > 0, den, 1.0), np.inf), 0.0)
    g = np.zeros(np.broadcast_shapes(Lb.shape, lam.shape))
    g[..., :q] = gq
    return g


def original_gain(lam, Lp) -> np.ndarray:
    """The optimal original-space perturbation ``dx* = (L' Sigma* - I)^-1 (x - mu*)`` maps
    coordinate i of ``x - mu*`` to ``1 + 1/(L' lam_i - 1)`` times itself (``+inf`` where
    ``L' lam_i <= 1``: the Lagrangian is unbounded there).
    """
    lam = np.asarray(lam, dtype=np.float64)
    x = multiplier(Lp, "L'") * lam
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 1, 1.0 + 1.0 / np.where(x > 1, x - 1.0, 1.0), np.inf)


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
