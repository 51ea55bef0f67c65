"""Excess risk of the optimal attacks at ``Theta*`` in closed form: Theorem 2 (latent space, with
the paper's misstated change-of-distribution part beside the correct one), Corollary 3 and
Theorem 4 (original space) with its bounds. Notation and conventions: ``closed_form``."""

from __future__ import annotations

import numpy as np

from .closed_form import latent_gain_increment, multiplier, original_gain, strategy_spectrum


# --------------------------------------------------------------------------- Theorem 2, Corollary 3


def support_ratio(Lam: np.ndarray, lam: np.ndarray) -> np.ndarray:
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
    g = latent_gain_increment(lam, q, L)[..., :q]  # f - 1
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
    return float(0.5 * np.sum(support_ratio(Lam, lam)))


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


def original_excess_risk(lam, Lp) -> np.ndarray:
    """Theorem 4, exact value (model held at ``Theta*``):

    ``L_r(Theta*, D) - L(Theta*, D) = 1/2 sum_{i=1..d} ((1 + 1/(L' lam_i - 1))^2 - 1)``
    ``= 1/2 sum_i (2 L' lam_i - 1) / (L' lam_i - 1)^2``.

    Requires ``L' lam_min > 1``; otherwise (in particular when ``lam_min = 0``: data on a
    manifold) the inner supremum, hence the excess risk, is ``+inf``. Each term behaves like
    ``1/(L' lam_i)`` for large ``L' lam_i``: the value decays like ``1/L'``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    x = multiplier(Lp, "L'") * lam
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
