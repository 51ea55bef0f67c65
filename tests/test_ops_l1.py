"""The l1 step against an INDEPENDENT float64 oracle, not against manifoldadv's own reference.

- SLIDE step in numpy (np.partition for the k-th largest |g|, ties included);
- exact Euclidean projection onto {||d||_1 <= eps} ∩ box by SORTING the breakpoints of
  F(lam) = sum_i clip(|v_i| - lam, 0, u_i) and interpolating on the linear piece that crosses
  eps (the kernel never sorts: it brackets and takes Newton steps);
- on small dimensions, scipy's SLSQP on the split QP min ||p - q - v||^2, p, q >= 0,
  sum(p + q) <= eps, p <= room up, q <= room down;
- KKT conditions and "no sampled feasible point is closer" on the kernel's own output.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from manifoldadv import ops

pytestmark = pytest.mark.skipif(not ops.extension_loaded(), reason="extension not built")
INF = math.inf


def slide_step(x, x0, g, step, lo, hi, q):
    """numpy SLIDE step in float32, as specified in manifoldadv.ops; returns v = x + step - x0."""
    x, x0, g = (np.asarray(a, np.float32) for a in (x, x0, g))
    g = np.where(np.isfinite(g), g, np.float32(0))
    outward = ((x >= np.float32(hi)) & (g > 0)) | ((x <= np.float32(lo)) & (g < 0))
    g = np.where(outward, np.float32(0), g)
    a = np.abs(g)
    n = a.size
    k = max(1, min(n, n - math.floor(q * n + 1e-6)))
    thr = np.partition(a, n - k)[n - k]
    mask = (a >= thr) & (a > 0)
    count = np.float32(max(int(mask.sum()), 1))
    s = np.float32(np.float32(step) / count)
    return (x - x0) + np.where(mask, np.sign(g).astype(np.float32) * s, np.float32(0))


def project_sort(v, x0, eps, lo, hi):
    """Exact projection of v (float64) by sorting all breakpoints of F."""
    v = np.asarray(v, np.float64)
    x0 = np.asarray(x0, np.float64)
    a = np.abs(v)
    u = np.maximum(np.where(v > 0, hi - x0, x0 - lo), 0.0)

    def G(ts, b):
        # sum_j max(b_j - t, 0) for each t, from the sorted b and its suffix sums
        b = np.sort(b[np.isfinite(b)])
        suffix = np.concatenate([np.cumsum(b[::-1])[::-1], [0.0]])
        idx = np.searchsorted(b, ts, side="right")
        return suffix[idx] - ts * (b.size - idx)

    def F(ts):
        # clip(r, 0, u) = max(r, 0) - max(r - u, 0) for u >= 0
        return G(ts, a) - G(ts, a - u)

    if np.minimum(a, u).sum() <= eps:
        lam = 0.0
    else:
        bps = np.concatenate([a, a - u, [0.0]])
        bps = np.unique(bps[np.isfinite(bps) & (bps >= 0)])
        f = F(bps)  # non-increasing in bps
        j = int(np.nonzero(f <= eps)[0][0])  # first breakpoint where F <= eps (F(0) > eps: j >= 1)
        t0, t1, f0, f1 = bps[j - 1], bps[j], f[j - 1], f[j]
        lam = t1 if f0 == f1 else t0 + (f0 - eps) * (t1 - t0) / (f0 - f1)
    return np.sign(v) * np.minimum(np.maximum(a - lam, 0.0), u), lam


def project_scipy(v, x0, eps, lo, hi):
    n = v.size
    up = np.maximum(hi - x0, 0.0)
    dn = np.maximum(x0 - lo, 0.0)
    fun = lambda z: float(((z[:n] - z[n:] - v) ** 2).sum())  # noqa: E731
    jac = lambda z: np.concatenate([2 * (z[:n] - z[n:] - v), -2 * (z[:n] - z[n:] - v)])  # noqa: E731
    cons = [{"type": "ineq", "fun": lambda z: eps - z.sum(), "jac": lambda z: -np.ones(2 * n)}]
    bounds = [(0.0, None if not np.isfinite(b) else b) for b in np.concatenate([up, dn])]
    z0 = np.zeros(2 * n)
    r = minimize(fun, z0, jac=jac, bounds=bounds, constraints=cons, method="SLSQP",
                 options={"ftol": 1e-14, "maxiter": 500})
    return r.x[:n] - r.x[n:]


def kernel_step(x, x0, g, step, eps, lo, hi, q):
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32)[None].copy())  # noqa: E731
    out = ops.pgd_step(t(x), t(x0), t(g), step=step, eps=eps, norm="l1", lo=lo, hi=hi, l1_quantile=q)
    return out[0].numpy().astype(np.float64)


def case(seed, n, box, dense):
    rng = np.random.default_rng(seed)
    lo, hi = box
    x0 = rng.uniform(lo, hi, n) if math.isfinite(lo) else rng.normal(size=n) * 2
    delta = rng.normal(size=n) * (0.2 if dense else 0.0)
    if not dense:
        idx = rng.choice(n, size=max(1, n // 10), replace=False)
        delta[idx] = rng.normal(size=idx.size) * 0.5
    x = np.clip(x0 + delta, lo, hi)
    g = rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e3])
    if rng.random() < 0.3:
        g = np.round(g)  # ties at the threshold
    return x.astype(np.float32), x0.astype(np.float32), g.astype(np.float32)


BOX = st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (-INF, INF)])


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([1, 2, 7, 64, 513, 3072]),
    box=BOX,
    step=st.sampled_from([0.0, 0.1, 1.0, 10.0]),
    eps=st.sampled_from([0.0, 0.05, 1.0, 12.0, INF]),
    q=st.sampled_from([0.0, 0.8, 0.99]),
    dense=st.booleans(),
)
def test_l1_matches_sort_oracle(seed, n, box, step, eps, q, dense):
    x, x0, g = case(seed, n, box, dense)
    lo, hi = box
    v = slide_step(x, x0, g, step, lo, hi, q).astype(np.float64)
    d, _ = project_sort(v, x0, eps, lo, hi)
    want = np.clip(x0.astype(np.float64) + d, lo, hi).astype(np.float32)
    got = kernel_step(x, x0, g, step, eps, lo, hi, q)
    scale = max(1.0, float(np.abs(x0).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)


def check_kkt_and_feasible(got, x0, v, eps, lo, hi, rng):
    """got = x0 + d from the kernel: feasible, KKT-optimal, and no sampled feasible point is closer."""
    x0 = x0.astype(np.float64)
    d = got - x0
    # float32 output rounding: half an ulp of the largest magnitude involved, per coordinate
    tol = 1.2e-7 * max(1.0, np.abs(x0).max(), np.abs(v).max())
    # feasible
    assert (got >= lo).all() and (got <= hi).all()
    assert np.abs(d).sum() <= eps + tol * d.size
    a, ad = np.abs(v), np.abs(d)
    u = np.maximum(np.where(v > 0, hi - x0, x0 - lo), 0.0)
    # d never points against v and never moves further than |v|
    assert (d * v >= -tol).all() and (ad <= a + tol).all()
    interior = (ad > tol) & (ad < u - tol)
    lam = float(np.median((a - ad)[interior])) if interior.any() else None
    if lam is not None:
        assert lam >= -tol
        # one threshold for every interior coordinate ...
        np.testing.assert_allclose((a - ad)[interior], lam, atol=10 * tol)
        # ... zero coordinates have |v| <= lam, saturated ones |v| - u >= lam
        assert (a[ad <= tol] <= lam + 10 * tol).all()
        assert ((a - u)[(ad >= u - tol) & (u > tol)] >= lam - 10 * tol).all()
        if lam > 10 * tol:  # the ball is active: complementary slackness
            assert abs(np.abs(d).sum() - eps) <= tol * d.size
    # no feasible point among convex combinations with other feasible points is closer to v
    dist = np.linalg.norm(d - v)
    others = [np.zeros_like(d)]
    w = np.sign(v) * np.minimum(a, u)
    if np.isfinite(eps) and np.abs(w).sum() > 0:
        w = w * min(1.0, eps / np.abs(w).sum())
    others.append(w)
    for _ in range(20):
        r = rng.normal(size=d.size)
        r = np.clip(r, -(x0 - lo), hi - x0)
        if np.isfinite(eps) and np.abs(r).sum() > 0:
            r = r * min(1.0, eps / np.abs(r).sum())
        others.append(r)
    for o in others:
        for t in (1e-3, 0.1, 0.5):
            y = (1 - t) * d + t * o
            assert np.linalg.norm(y - v) >= dist - 10 * tol


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 6),
    box=BOX,
    step=st.sampled_from([0.0, 0.3, 2.0]),
    eps=st.sampled_from([0.0, 0.1, 0.7, 3.0]),
)
def test_l1_matches_scipy_qp_on_small_dims(seed, n, box, step, eps):
    x, x0, g = case(seed, n, box, dense=True)
    lo, hi = box
    v = slide_step(x, x0, g, step, lo, hi, 0.5).astype(np.float64)
    got = kernel_step(x, x0, g, step, eps, lo, hi, 0.5)
    d_qp = project_scipy(v, x0.astype(np.float64), eps, lo, hi)
    d = got - x0.astype(np.float64)
    # the kernel's point is at least as close as the QP solver's (up to float32 output rounding)
    assert np.linalg.norm(d - v) <= np.linalg.norm(d_qp - v) + 1e-6 * (1 + np.abs(x0).max())
    np.testing.assert_allclose(d, d_qp, atol=1e-4)
    check_kkt_and_feasible(got, x0, v, eps, lo, hi, np.random.default_rng(seed))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([3, 50, 784]),
    box=BOX,
    eps=st.sampled_from([0.1, 2.0, 10.0]),
    dense=st.booleans(),
)
def test_l1_kkt_and_optimality(seed, n, box, eps, dense):
    x, x0, g = case(seed, n, box, dense)
    lo, hi = box
    v = slide_step(x, x0, g, 1.0, lo, hi, 0.9).astype(np.float64)
    got = kernel_step(x, x0, g, 1.0, eps, lo, hi, 0.9)
    check_kkt_and_feasible(got, x0, v, eps, lo, hi, np.random.default_rng(seed))


def test_l1_hard_cases():
    """Many equal |v| (the first step from x0), saturation at the box, eps = 0."""
    n = 1000
    x0 = np.full(n, 0.5, np.float32)
    g = np.ones(n, np.float32)
    g[::2] = -1
    for eps, lo, hi in [(1e-3, 0.0, 1.0), (0.0, 0.0, 1.0), (5.0, 0.0, 0.5000001), (INF, 0.0, 1.0), (7.0, -INF, INF)]:
        for q in (0.0, 0.5, 0.99):
            got = kernel_step(x0, x0, g, 3.0, eps, lo, hi, q)
            v = slide_step(x0, x0, g, 3.0, lo, hi, q).astype(np.float64)
            d, _ = project_sort(v, x0, eps, lo, hi)
            want = np.clip(x0 + d, lo, hi).astype(np.float32)
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # a sample that needs many bracket steps: breakpoints spread over 12 orders of magnitude
    rng = np.random.default_rng(1)
    x0 = np.zeros(4096, np.float32)
    x = (rng.choice([-1, 1], 4096) * 10.0 ** rng.uniform(-6, 6, 4096)).astype(np.float32)
    g = np.zeros(4096, np.float32)
    for eps in (1e-5, 1.0, 1e3, 1e5):
        got = kernel_step(x, x0, g, 0.0, eps, -INF, INF, 0.9)
        d, _ = project_sort(x.astype(np.float64), x0, eps, -INF, INF)
        np.testing.assert_allclose(got, d.astype(np.float32), rtol=1e-6, atol=1e-6 * eps)


@pytest.mark.parametrize("n", [33, 784, 3072])
@pytest.mark.parametrize("box", [(0.0, 1.0), (-INF, INF), (-INF, 1.0)])
def test_reference_matches_sort_oracle(n, box):
    """The pure-PyTorch reference (the oracle of the CUDA tests and the fallback) against the
    sorting oracle, where the ball constraint is active; without a box every room is inf."""
    lo, hi = box
    for seed in range(3):
        x, x0, g = case(seed, n, box, dense=True)
        v = slide_step(x, x0, g, 1.0, lo, hi, 0.9).astype(np.float64)
        eps = 0.5 * float(np.minimum(np.abs(v), np.maximum(np.where(v > 0, hi - x0, x0 - lo), 0)).sum())
        d, _ = project_sort(v, x0, eps, lo, hi)
        want = np.clip(x0.astype(np.float64) + d, lo, hi).astype(np.float32)
        t = lambda a: torch.from_numpy(np.asarray(a, np.float32)[None].copy())  # noqa: E731
        got = ops.pgd_step_reference(t(x), t(x0), t(g), step=1.0, eps=eps, norm="l1", lo=lo, hi=hi,
                                     l1_quantile=0.9)[0].numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(x0).max())))
