"""CUDA kernels against the reference (skipped without a GPU; see conftest.py)."""

import math

import numpy as np
import pytest
import torch

from manifoldadv import ops

pytestmark = pytest.mark.cuda
INF = math.inf


def case(seed, shape, box=(0.0, 1.0), delta=0.02, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lo, hi = box
    if math.isfinite(lo) and math.isfinite(hi):
        x0 = lo + (hi - lo) * torch.rand(shape, generator=g)
    else:
        x0 = 2 * torch.randn(shape, generator=g)
    x = (x0 + delta * torch.randn(shape, generator=g)).clamp(lo, hi)
    gr = torch.randn(shape, generator=g)
    return [t.to("cuda", dtype) for t in (x, x0, gr)]


def test_cuda_backends_are_compiled():
    assert all(per["cuda"] == "compiled" for per in ops.backends(("cuda",)).values())


@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1), ("l1", 8.0, 1.0)])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (64, 1, 28, 28), (16, 3, 32, 32), (9, 8192), (3, 8193),
                                   (2, 100_003)])
@pytest.mark.parametrize("box", [(0.0, 1.0), (-INF, INF)])
def test_float32_matches_reference(norm, eps, step, shape, box):
    x, x0, g = case(0, shape, box)
    kw = dict(step=step, eps=eps, norm=norm, lo=box[0], hi=box[1])
    ref = ops.pgd_step_reference(x, x0, g, **kw)
    out = ops.pgd_step(x, x0, g, **kw)
    atol = {"linf": 0.0, "l2": 4e-6, "l1": 1e-6}[norm] * (1 + float(x0.abs().max()))
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    xi = x.clone()
    ops.pgd_step_(xi, x0, g, **kw)
    torch.testing.assert_close(xi, out, atol=0, rtol=0)
    # same answer as the CPU kernel
    torch.testing.assert_close(out.cpu(), ops.pgd_step(x.cpu(), x0.cpu(), g.cpu(), **kw), atol=atol, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_run_natively(norm, dtype):
    x, x0, g = case(1, (32, 3, 16, 16), dtype=dtype)
    kw = dict(step=0.05, eps=0.5 if norm != "l1" else 5.0, norm=norm)
    out = ops.pgd_step(x, x0, g, **kw)
    assert out.dtype == dtype
    ref = ops.pgd_step_reference(x, x0, g, **kw)
    # float32 arithmetic, one rounding to the storage dtype: at most one ulp apart
    ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=ulp, rtol=0)


# boundaries of l2_regs_kernel's tiers in float32 (4 per pack) and bfloat16 (8 per pack): up to 256,
# 512 and 1024 packs; past them, and unaligned lengths, the two-pass kernel
@pytest.mark.parametrize("n", [4, 33, 784, 1024, 1028, 2048, 2052, 3072, 4096, 4100, 8192, 8200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_l2_variants_match_the_reference_and_each_other(monkeypatch, n, dtype):
    x, x0, g = case(4, (37, n), dtype=dtype)
    x[5], g[6] = x0[5], 0.0  # at the centre; a zero gradient
    kw = dict(step=0.1, eps=0.5, norm="l2")
    ref = ops.pgd_step_reference(x, x0, g, **kw)
    atol = 4e-6 * (1 + float(x0.abs().max())) if dtype == torch.float32 else 2**-7
    outs = {}
    for variant in ("block", "registers"):
        monkeypatch.setenv("MANIFOLDADV_CUDA_L2", variant)
        outs[variant] = ops.pgd_step(x, x0, g, **kw)
        torch.testing.assert_close(outs[variant].float(), ref.float(), atol=atol, rtol=0)
        xi = x.clone()
        ops.pgd_step_(xi, x0, g, **kw)  # in place: the same bits
        assert torch.equal(xi, outs[variant])
        xs = x0.clone()
        ops.pgd_step_(xs, xs, g, **kw)  # x0 is x
        assert torch.equal(xs, ops.pgd_step(x0, x0, g, **kw))
    torch.testing.assert_close(outs["registers"].float(), outs["block"].float(), atol=atol, rtol=0)


def test_l2_variant_setting_is_checked(monkeypatch):
    x, x0, g = case(5, (3, 784))
    monkeypatch.setenv("MANIFOLDADV_CUDA_L2", "warp")
    with pytest.raises(RuntimeError, match="MANIFOLDADV_CUDA_L2 must be block or registers"):
        ops.pgd_step(x, x0, g, step=0.1, eps=0.5, norm="l2")


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_nonfinite_and_degenerate(norm):
    x, x0, g = case(2, (6, 50))
    g[0] = 0.0
    g[1, 3] = float("nan")
    g[2, 4] = float("inf")
    x[3, 7] = float("inf")
    x0[4, 1] = float("nan")
    x[5] = x0[5]
    kw = dict(step=0.1, eps=0.7, norm=norm)
    torch.testing.assert_close(ops.pgd_step(x, x0, g, **kw), ops.pgd_step_reference(x, x0, g, **kw),
                               atol=1e-5, rtol=0, equal_nan=True)
    if norm == "l2":  # the register-resident kernel too (6 x 52: one pack-aligned tier)
        x, x0, g = (torch.cat([t, t[:, :2]], 1) for t in (x, x0, g))
        ref = ops.pgd_step_reference(x, x0, g, **kw)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MANIFOLDADV_CUDA_L2", "registers")
            torch.testing.assert_close(ops.pgd_step(x, x0, g, **kw), ref, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_opcheck_cuda(norm):
    x, x0, g = case(3, (4, 3, 9))
    args = (0.05, 0.5, norm, 0.0, 1.0, 0.9)
    torch.library.opcheck(torch.ops.manifoldadv.pgd_step.default, (x, x0, g, *args))
    torch.library.opcheck(torch.ops.manifoldadv.pgd_step_.default, (x.clone(), x0, g, *args))


def test_covariance_matches_np_cov():
    rng = np.random.default_rng(0)
    C, d, n = 4, 96, 3000
    X = (1e4 + rng.normal(size=(n, d)) * rng.uniform(0.1, 2.0, d)).astype(np.float32)
    y = rng.integers(0, C, n)
    acc = ops.ClassCovariance(C, d, device="cuda", buffer_rows=0)
    for i in range(0, n, 37):
        acc.update(torch.from_numpy(X[i:i + 37]).cuda(), torch.from_numpy(y[i:i + 37]).cuda())
    counts, means, covs = (t.cpu().numpy() for t in acc.finalize())
    for c in range(C):
        Xc = X[y == c].astype(np.float64)
        assert counts[c] == len(Xc)
        np.testing.assert_allclose(means[c], Xc.mean(0), rtol=0, atol=1e-9)
        ref = np.cov(Xc, rowvar=False)
        np.testing.assert_allclose(covs[c], ref, rtol=0, atol=1e-9 * np.abs(ref).max())
        np.testing.assert_array_equal(covs[c], covs[c].T)


def test_opcheck_cov_cuda():
    C, d = 3, 5
    X = torch.randn(40, d, device="cuda")
    y = torch.arange(40, device="cuda") % C
    args = (torch.zeros(C, dtype=torch.int64, device="cuda"), torch.zeros(C, d, dtype=torch.float64, device="cuda"),
            torch.zeros(C, d, d, dtype=torch.float64, device="cuda"), X, y)
    torch.library.opcheck(torch.ops.manifoldadv.class_cov_update_.default, args)
    counts, m2 = args[0].clone(), args[2].clone()
    torch.ops.manifoldadv.class_cov_update_(counts, args[1].clone(), m2, X, y)
    torch.library.opcheck(torch.ops.manifoldadv.class_cov_finalize.default, (counts, m2))
