"""Monte Carlo estimates of the theory's expectations, from samples drawn by the definitions in
``gaussian`` (random rotation of the eigenbasis, strategies by encode/decode and sampling, the
optimal perturbation in its first-order-condition matrix form), with standard errors and
z-scores against the closed forms. Results are deterministic for a seed."""

from __future__ import annotations

import math

import numpy as np

from .gaussian import GaussianLoss, fit_ppca, population, strategy_sample, thin_product

FULL_MOMENTS_MAX_D = 64  # second moments as a full d x d matrix up to this d, the diagonal above


class RunningMean:
    """Running mean and standard error (Chan et al.'s merge) of values that may be infinite.

    An infinite value makes the mean that infinity (a loss is +inf off the support). A NaN, or
    +inf beside -inf, makes it NaN: a defect upstream must fail the comparison, not pass as
    an infinity equal to an infinite closed form."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.nan = self.pos_inf = self.neg_inf = False

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            self.nan |= bool(np.isnan(x).any())
            self.pos_inf |= bool(np.isposinf(x).any())
            self.neg_inf |= bool(np.isneginf(x).any())
            self.n += x.size
            return
        nb, mb = x.size, float(x.mean())
        m2b = float(np.sum((x - mb) ** 2))
        n = self.n + nb
        delta = mb - self.mean
        self.m2 += m2b + delta**2 * self.n * nb / n
        self.mean += delta * nb / n
        self.n = n

    def result(self) -> dict:
        if self.nan or (self.pos_inf and self.neg_inf):
            return {"mean": math.nan, "stderr": math.nan, "n": self.n}
        if self.pos_inf or self.neg_inf:
            return {"mean": math.inf if self.pos_inf else -math.inf, "stderr": math.nan, "n": self.n}
        se = math.sqrt(self.m2 / (self.n - 1) / self.n) if self.n > 1 else math.nan
        return {"mean": self.mean, "stderr": se, "n": self.n}


def chunks(n: int, d: int):
    """Batch sizes summing to n, each about 2e6 / d values wide (bounded memory)."""
    size = max(1000, int(2_000_000 // max(d, 1)))
    done = 0
    while done < n:
        k = min(size, n - done)
        yield k
        done += k


def zscore(value: float, mc: dict, floor: float = 1e-9) -> float:
    """``|value - mean| / stderr``: 0 when both are the same infinity, inf when only one is, NaN
    when either is NaN (so that both ``z <= tol`` and ``z > tol`` are false).

    The standard error gets a floor of ``floor * max(1, |value|)``: when an outcome is
    deterministic (say ``x' = x`` for rank-q data) the Monte Carlo spread is pure round-off and
    must not turn a 1e-16 difference into a large z."""
    m, se = mc["mean"], mc["stderr"]
    if math.isnan(value) or math.isnan(m):
        return math.nan
    if math.isinf(value) or math.isinf(m):
        return 0.0 if value == m else math.inf
    se = se if math.isfinite(se) else 0.0
    return abs(value - m) / math.hypot(se, floor * max(1.0, abs(value)))


# --------------------------------------------------------------------------- Lemma 1


def mc_strategy_moments(
    lam, q: int, strategy: int, n: int, seed: int = 0, rotate: bool = True, full: bool | None = None
) -> dict:
    """Sample ``x'`` by the strategy's definition and estimate its second moments around
    ``mu*`` in the data's eigenbasis, ``E[y y^T]`` with ``y = U^T (x' - mu*)``, with a standard
    error per entry: the full matrix when ``full`` (default for d <= 64), else the diagonal.
    Lemma 1 says it is ``diag(Lambda^(j))``."""
    rng = np.random.default_rng(seed)
    pop = population(lam, rng, rotate)
    gen = fit_ppca(pop.mu, pop.Sigma, q)
    d = pop.d
    full = d <= FULL_MOMENTS_MAX_D if full is None else full
    shape = (d, d) if full else (d,)
    s1, s2 = np.zeros(shape), np.zeros(shape)
    for k in chunks(n, d * d if full else d):
        X = pop.sample(k, rng)
        Y = thin_product(strategy_sample(gen, strategy, X, k, rng) - pop.mu, pop.U)
        P = Y[:, :, None] * Y[:, None, :] if full else Y**2
        s1 += P.sum(axis=0)
        s2 += (P**2).sum(axis=0)
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0) * n / max(n - 1, 1)
    return {"second_moment": mean, "stderr": np.sqrt(var / n), "n": n}


def bonferroni_z(m: int, alpha: float = 1e-4) -> float:
    """The |z| that m independent standard normals all stay under with probability 1 - alpha
    (two-sided Bonferroni): the threshold for a matrix of Monte Carlo z-scores."""
    from scipy.stats import norm

    return float(max(4.0, norm.isf(alpha / (2.0 * max(int(m), 1)))))


def moments_zscore(mc: dict, Lam: np.ndarray) -> float:
    """Largest |z| of the Monte Carlo second-moment matrix against ``diag(Lam)``."""
    ref = np.diag(Lam) if mc["second_moment"].ndim == 2 else np.asarray(Lam)
    diff = np.abs(mc["second_moment"] - ref)
    se = np.hypot(mc["stderr"], 1e-9 * max(1.0, float(np.max(Lam))))  # round-off floor, see zscore
    return float(np.max(diff / se))


# --------------------------------------------------------------------------- Theorems 2 and 4


def mc_latent_excess(lam, q: int, L: float, strategy: int, n: int, seed: int = 0, rotate: bool = True) -> dict:
    """Monte Carlo of Theorem 2 with the model at ``Theta* = (mu*, Sigma*)``.

    Per sample x ~ D: x' by the strategy, the Lagrangian maximiser
    ``dz = (L I - W^T Sigma^+ W)^-1 W^T Sigma^+ (x' - mu*)`` (the first-order condition, not the
    Woodbury form the theorem uses), ``x_adv = x' + W dz``. Returns mean/stderr/n of
    ``l(x_adv) - l(x')`` (perturbation), ``l(x') - l(x)`` (change of distribution) and
    ``l(x_adv) - l(x)`` (total). The sup is ``+inf`` when ``W^T Sigma^+ W`` has an eigenvalue >= L.
    When ``x'`` leaves the support of a singular ``Sigma*`` (strategies 2, 3 with sigma2 > 0) its
    loss is ``+inf``; the perturbation part is then the (finite) difference of the losses' support
    parts, which is what the closed form gives.
    """
    rng = np.random.default_rng(seed)
    pop = population(lam, rng, rotate)
    gen = fit_ppca(pop.mu, pop.Sigma, q)
    loss = GaussianLoss(pop.mu, pop.Sigma)
    H = gen.W.T @ loss.pinv @ gen.W
    unbounded = np.linalg.eigvalsh(0.5 * (H + H.T)).max() >= L * (1 - 1e-12)
    M = np.linalg.solve(L * np.eye(q) - H, gen.W.T @ loss.pinv) if not unbounded else None
    acc = {k: RunningMean() for k in ("perturbation", "change_of_distribution", "total")}
    for k in chunks(n, pop.d):
        X = pop.sample(k, rng)
        Xp = strategy_sample(gen, strategy, X, k, rng)
        lx, lxp = loss(X), loss(Xp)
        if unbounded:
            ladv = pert = np.full(k, np.inf)
        else:
            Xadv = Xp + thin_product(thin_product(Xp - pop.mu, M.T), gen.W.T)  # W M has rank q: two thin products
            ladv = loss(Xadv)
            # W dz lies in the support (q <= rank), so x_adv and x' share their off-support part:
            # where x' is off the support (both losses +inf) the difference is still finite.
            pert = loss.support_part(Xadv) - loss.support_part(Xp)
        acc["perturbation"].add(pert)
        acc["change_of_distribution"].add(lxp - lx)
        acc["total"].add(ladv - lx)
    return {k: v.result() for k, v in acc.items()}


def mc_original_excess(lam, Lp: float, n: int, seed: int = 0, rotate: bool = True) -> dict:
    """Monte Carlo of Theorem 4: ``l(x + dx) - l(x)`` with ``dx = (L' Sigma* - I)^-1 (x - mu*)``,
    the maximiser of the Lagrangian. When the Lagrangian's Hessian ``Sigma*^-1 - L' I`` is not
    negative definite (in particular for singular ``Sigma*``) there is no maximiser to sample:
    the result is ``+inf`` with ``n = 0``, the same condition as the closed form, not evidence
    for it (``solvers.lagrangian_unbounded`` is)."""
    rng = np.random.default_rng(seed)
    pop = population(lam, rng, rotate)
    Sigma = pop.Sigma
    loss = GaussianLoss(pop.mu, Sigma)
    if loss.rank < pop.d or float(loss.w.min()) * Lp <= 1.0:
        return {"mean": math.inf, "stderr": math.nan, "n": 0}
    acc = RunningMean()
    A = Lp * Sigma - np.eye(pop.d)
    for k in chunks(n, pop.d):
        X = pop.sample(k, rng)
        dX = thin_product(X - pop.mu, np.linalg.inv(A).T)
        acc.add(loss(X + dX) - loss(X))
    return acc.result()
