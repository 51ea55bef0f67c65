"""Gaussian primitives for the numerical side of the theory, written from the definitions and
independent of the closed forms: random rotations and covariances, the population
``N(mu*, Sigma*)``, the P-PCA generator fitted by an eigendecomposition, ``x'`` sampled by each
strategy's definition, and the Gaussian negative log-likelihood (degenerate covariances included).

Per-sample products avoid multi-threaded BLAS on thin matrices (slow on a busy shared machine):
``thin_product`` picks elementwise, einsum or BLAS, with the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .closed_form import as_spectrum

LOG2PI = math.log(2.0 * math.pi)


def thin_product(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` for a tall A and a small B: elementwise when B is diagonal (the eigenbasis of a
    large spectrum), numpy's own loop (einsum) when B is small, since multi-threaded BLAS on thin
    products is slow on a busy shared machine; BLAS otherwise. The result is the same product."""
    if B.shape[0] == B.shape[1] and B.shape[0] > 1:
        diag = np.diagonal(B)
        if np.count_nonzero(B) == np.count_nonzero(diag):
            return A * diag
    if B.shape[0] * B.shape[1] <= 4096:
        return np.einsum("nd,dk->nk", A, B)
    return A @ B


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def random_spd(d: int, rng: np.random.Generator, cond: float = 20.0) -> np.ndarray:
    """A random symmetric positive-definite, non-diagonal matrix with condition number ``cond``."""
    U = random_rotation(d, rng)
    w = np.exp(rng.uniform(0.0, math.log(cond), size=d))
    w[0], w[-1] = 1.0, cond
    return (U * w) @ U.T




@dataclass
class Population:
    """The data distribution ``N(mu*, Sigma*)`` with ``Sigma* = U diag(lam) U^T``."""

    lam: np.ndarray
    U: np.ndarray
    mu: np.ndarray

    @property
    def Sigma(self) -> np.ndarray:
        return (self.U * self.lam) @ self.U.T

    @property
    def d(self) -> int:
        return self.lam.shape[0]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.mu + thin_product(rng.standard_normal((n, self.d)) * np.sqrt(self.lam), self.U.T)


def population(lam, rng: np.random.Generator, rotate: bool = True) -> Population:
    lam = as_spectrum(lam)
    d = lam.shape[0]
    U = random_rotation(d, rng) if rotate else np.eye(d)
    mu = rng.standard_normal(d) if rotate else np.zeros(d)
    return Population(lam, U, mu)



def eigh_desc(S: np.ndarray):
    """Eigenvalues (decreasing) and eigenvectors of a symmetric matrix; a diagonal one is read off
    (LAPACK on a large matrix is slow on a busy machine and would only return the identity)."""
    S = 0.5 * (S + S.T)
    if np.count_nonzero(S) == np.count_nonzero(np.diagonal(S)):
        order = np.argsort(-np.diagonal(S), kind="stable")
        return np.diagonal(S)[order].copy(), np.eye(S.shape[0])[:, order]
    w, V = np.linalg.eigh(S)
    return w[::-1].copy(), V[:, ::-1].copy()


@dataclass
class Generator:
    """Probabilistic PCA fitted to (mu, S): ``x = W z + mu + eps``, eps ~ N(0, sigma2 I)."""

    mu: np.ndarray
    W: np.ndarray  # d x q
    sigma2: float
    V: np.ndarray  # eigenvectors of S, decreasing eigenvalues
    w: np.ndarray  # eigenvalues of S, decreasing

    @property
    def q(self) -> int:
        return self.W.shape[1]

    @property
    def P(self) -> np.ndarray:
        return self.W.T @ self.W + self.sigma2 * np.eye(self.q)

    def encode_mean(self, X: np.ndarray) -> np.ndarray:
        return thin_product(X - self.mu, np.linalg.solve(self.P, self.W.T).T)

    def decode_mean(self, Z: np.ndarray) -> np.ndarray:
        return thin_product(Z, self.W.T) + self.mu


def fit_ppca(mu, S, q: int) -> Generator:
    """Tipping & Bishop's maximum-likelihood P-PCA for a mean and covariance (by eigh, from the
    definitions: ``sigma2`` = mean of the discarded eigenvalues, ``W = U_q (Lambda_q - sigma2)^(1/2)``)."""
    w, V = eigh_desc(np.asarray(S, dtype=np.float64))
    w = np.where(np.abs(w) <= 10 * w.size * np.finfo(float).eps * np.abs(w).max(), 0.0, w)
    d = w.size
    sigma2 = float(w[q:].mean()) if q < d else 0.0
    W = V[:, :q] * np.sqrt(np.maximum(w[:q] - sigma2, 0.0))
    return Generator(np.asarray(mu, dtype=np.float64).copy(), W, sigma2, V, w)


def strategy_sample(gen: Generator, strategy: int, X: np.ndarray | None, n: int, rng) -> np.ndarray:
    """``x'`` by the strategy's definition (section 4.2); ``x_adv = x' + W dz``.

    1: z = argmax q(z|x) = P^-1 W^T (x - mu), x' = W z + mu (decode mean)
    2: z ~ q(z|x) = N(P^-1 W^T (x - mu), sigma2 P^-1), x' ~ p(x|z) = N(W z + mu, sigma2 I)
    3: z ~ N(0, I), x' ~ p(x|z)
    """
    q, d = gen.q, gen.mu.shape[0]
    if strategy in (1, 2):
        if X is None:
            raise ValueError("strategies 1 and 2 encode data")
        Z = gen.encode_mean(X)
        if strategy == 1:
            return gen.decode_mean(Z)
        Lc = np.linalg.cholesky(gen.sigma2 * np.linalg.inv(gen.P)) if gen.sigma2 > 0 else np.zeros((q, q))
        Z = Z + thin_product(rng.standard_normal(Z.shape), Lc.T)
        return gen.decode_mean(Z) + math.sqrt(gen.sigma2) * rng.standard_normal((Z.shape[0], d))
    Z = rng.standard_normal((n, q))
    return gen.decode_mean(Z) + math.sqrt(gen.sigma2) * rng.standard_normal((n, d))



def strategy_covariance(gen: Generator, Sigma_star: np.ndarray, strategy: int) -> np.ndarray:
    """Covariance of ``x'`` from the strategy's definition in matrix form (independent of Lemma 1's
    eigenvalue formulas): ``A Sigma* A^T`` with ``A = W P^-1 W^T`` for strategy 1, plus
    ``sigma2 W P^-1 W^T + sigma2 I`` for 2; ``W W^T + sigma2 I`` for 3."""
    W, s2, P = gen.W, gen.sigma2, gen.P
    Pi = np.linalg.inv(P)
    A = W @ Pi @ W.T
    d = W.shape[0]
    if strategy == 1:
        return A @ Sigma_star @ A.T
    if strategy == 2:
        return A @ Sigma_star @ A.T + s2 * W @ Pi @ W.T + s2 * np.eye(d)
    return W @ W.T + s2 * np.eye(d)


class GaussianLoss:
    """``l(x; mu, Sigma) = r/2 log 2 pi + 1/2 log pdet(Sigma) + 1/2 (x-mu)^T Sigma^+ (x-mu)``, the
    negative log-density of the (possibly degenerate) Gaussian on its support; ``+inf`` off it."""

    def __init__(self, mu, Sigma):
        Sigma = np.asarray(Sigma, dtype=np.float64)
        # A diagonal covariance (the eigenbasis of a large spectrum) is read off directly, so the
        # projections below are column selections instead of d x d products.
        self.diagonal = np.count_nonzero(Sigma) == np.count_nonzero(np.diagonal(Sigma))
        if self.diagonal:
            w, V = np.diagonal(Sigma).copy(), np.eye(Sigma.shape[0])
        else:
            w, V = eigh_desc(Sigma)
        # the same round-off rule as as_spectrum, so both agree on what is zero
        tol = 10.0 * w.size * np.finfo(np.float64).eps * max(float(w.max()), 0.0)
        keep = w > tol
        self.keep = keep
        self.mu = np.asarray(mu, dtype=np.float64)
        self.V, self.w, self.Vn = V[:, keep], w[keep], V[:, ~keep]
        self.rank = int(keep.sum())
        self.logdet = float(np.sum(np.log(self.w)))
        self.pinv = (self.V / self.w) @ self.V.T
        self.off_tol = 1e-8 * math.sqrt(float(w.max()))

    def support_part(self, X: np.ndarray) -> np.ndarray:
        """The loss without the off-support ``+inf``: the log-density of the projection of X onto
        the support. Two points differing by a vector inside the support have the same off-support
        part, so the difference of their losses is the difference of these."""
        D = X - self.mu
        Y = D[:, self.keep] if self.diagonal else thin_product(D, self.V)
        return 0.5 * (self.rank * LOG2PI + self.logdet + np.sum(Y**2 / self.w, axis=1))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        D = X - self.mu
        out = self.support_part(X)
        if self.Vn.shape[1]:
            off_part = D[:, ~self.keep] if self.diagonal else thin_product(D, self.Vn)
            out = np.where(np.linalg.norm(off_part, axis=1) > self.off_tol, np.inf, out)
        return out


def rel_error(x, ref) -> np.ndarray:
    """``|x - ref| / |ref|`` elementwise, ``|x|`` where ``ref = 0``."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ref != 0, np.abs(x - ref) / np.abs(np.where(ref != 0, ref, 1.0)), np.abs(x))
