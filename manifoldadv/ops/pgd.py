"""The fused PGD step: `pgd_step` (a new tensor) and `pgd_step_` (in place), and their
pure-PyTorch reference, the oracle the kernels are tested against and the fallback.

Semantics of one step (batch = dim 0; every other dim is one sample):

- linf: ``x + step*sign(g)``, clip to ``[x0-eps, x0+eps]``, clip to ``[lo, hi]``.
- l2: ``x + step*g/||g||`` (no move where ``||g|| = 0``), project ``x - x0`` onto the l2 ball
  of radius eps, clip to ``[lo, hi]`` (clipping only shrinks ``|x - x0|``, so the result stays
  in the ball).
- l1 (SLIDE, Tramer & Boneh 2019): coordinates sitting on the box limit whose gradient
  pushes outward are dropped; of the rest, the ``k = clamp(n - floor(q*n + 1e-6), 1, n)``
  largest ``|g|`` (ties at the threshold included) move by ``step*sign(g)/count``; then
  ``x - x0`` is projected EXACTLY (Euclidean) onto ``{||d||_1 <= eps} ∩ {lo <= x0+d <= hi}``:
  ``d_i = sign(v_i) * clip(|v_i| - lam, 0, u_i)`` with ``u_i`` the room to the box in the
  direction of ``v_i``.
- ``lo``/``hi`` = -inf/+inf means no box (latent-space steps); ``eps = inf`` means no ball.
- Non-finite gradient entries count as zero. A non-finite ``x`` or ``x0`` gives NaN: at that
  coordinate for linf, for the whole sample for l2 and l1. ``x0`` is assumed inside the box.
- ``step`` must be finite and >= 0; ``eps`` >= 0 (inf allowed); ``lo <= hi``. An empty batch or
  empty samples give an empty result. Tensors must be floating point.
- dtypes: the step is computed in float32 and returned in ``x``'s dtype. The CPU kernel takes
  float32, the CUDA kernel float32, float16 or bfloat16 when x, x0 and grad share it; anything
  else is upcast to float32 first, so every dtype works everywhere with the same semantics.

The kernels (``csrc/``): linf is one fused pass; l2 one read pass for ``||g||^2``,
``<x-x0, g>`` and ``||x-x0||^2`` in float64, then one write pass; l1 finds the SLIDE threshold by
radix selection and the projection's ``lam`` by a bracketed Newton iteration, never by sorting
(``csrc/pgd_step_kernel.h`` has the details and the guarantee).
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError
from .extension import PGD_STEP, PGD_STEP_, use_kernel

NORMS = ("linf", "l2", "l1")

def l1_topk(n: int, q: float) -> int:
    """How many coordinates a SLIDE step moves for quantile q over n coordinates."""
    return max(1, min(n, n - math.floor(q * n + 1e-6)))


def _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile):
    if norm not in NORMS:
        raise UsageError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if x.shape != x0.shape or x.shape != grad.shape:
        raise UsageError(
            f"pgd_step: x, x0 and grad must have one shape, got {tuple(x.shape)}, "
            f"{tuple(x0.shape)}, {tuple(grad.shape)}"
        )
    if x.dim() < 1:
        raise UsageError("pgd_step: tensors need a batch dimension")
    bad = next((t for t in (x, x0, grad) if not t.is_floating_point()), None)
    if bad is not None:  # an integer step would round every move away and return x unchanged
        raise TypeError(f"pgd_step: x, x0 and grad must be floating-point tensors, got {bad.dtype}")
    if x.device != x0.device or x.device != grad.device:
        raise UsageError(
            f"pgd_step: x, x0 and grad must be on one device, got {x.device}, {x0.device}, {grad.device}"
        )
    if not (math.isfinite(step) and step >= 0 and eps >= 0):
        raise UsageError(
            f"pgd_step: step must be finite and >= 0 and eps >= 0, got step={step}, eps={eps}"
        )
    if not lo <= hi:
        raise UsageError(f"pgd_step: need lo <= hi, got lo={lo}, hi={hi}")
    if not 0.0 <= l1_quantile < 1.0:
        raise UsageError(f"pgd_step: l1_quantile must be in [0, 1), got {l1_quantile}")


def pgd_step_reference(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99):
    """Pure-PyTorch PGD step (the oracle and the fallback). Same contract as `pgd_step`."""
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    out_dtype = x.dtype
    b = x.shape[0]
    n = math.prod(x.shape[1:])
    if b == 0 or n == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    xf, x0f = x.float().reshape(b, n), x0.float().reshape(b, n)
    g = grad.float().reshape(b, n)
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    finite = torch.isfinite(xf) & torch.isfinite(x0f)
    if norm == "linf":
        y = xf + step * torch.sign(g)
        y = torch.minimum(torch.maximum(y, x0f - eps), x0f + eps)
        y = y.clamp(lo, hi)
        y = torch.where(finite, y, torch.full_like(y, float("nan")))
    elif norm == "l2":
        # Norms in float64: in float32 ||g||^2 overflows for entries above ~1.8e19, which left
        # such samples unmoved (and an overflowing ||d|| sent them to x0 instead of the sphere).
        g64 = g.double()
        gn = torch.linalg.vector_norm(g64, dim=1, keepdim=True)
        u = torch.where(gn > 0, (g64 / gn.clamp_min(torch.finfo(torch.float64).tiny)).float(), torch.zeros_like(g))
        d = xf + step * u - x0f
        dn = torch.linalg.vector_norm(d.double(), dim=1, keepdim=True)
        scale = torch.where(dn > eps, eps / dn, torch.ones_like(dn)).float()
        y = (x0f + d * scale).clamp(lo, hi)
        y = torch.where(finite.all(dim=1, keepdim=True), y, torch.full_like(y, float("nan")))
    else:
        n = g.shape[1]
        outward = ((xf >= hi) & (g > 0)) | ((xf <= lo) & (g < 0))
        g = torch.where(outward, torch.zeros_like(g), g)
        a = g.abs()
        k = l1_topk(n, l1_quantile)
        thr = a.topk(k, dim=1).values[:, -1:]
        mask = (a >= thr) & (a > 0)
        count = mask.sum(dim=1, keepdim=True).clamp_min(1).float()
        v = (xf - x0f + step * torch.sign(g) * mask / count).double()
        d = _project_l1_box(v, x0f.double(), eps, lo, hi)
        y = (x0f.double() + d).clamp(lo, hi).float()
        y = torch.where(finite.all(dim=1, keepdim=True), y, torch.full_like(y, float("nan")))
    return y.reshape(x.shape).to(out_dtype)


def _project_l1_box(v: torch.Tensor, x0: torch.Tensor, eps: float, lo: float, hi: float, iters: int = 64):
    """Euclidean projection of each row of v onto {||d||_1 <= eps} ∩ {lo <= x0 + d <= hi}.

    d_i(lam) = sign(v_i) * clip(|v_i| - lam, 0, u_i), u_i = hi - x0_i if v_i > 0 else x0_i - lo.
    F(lam) = sum_i |d_i(lam)| is continuous, piecewise linear and non-increasing, so lam solves
    F(lam) = eps; bisection brackets it, then the linear piece through the bracket gives it
    exactly: lam = (sum_active |v_i| + sum_saturated u_i - eps) / #active.
    """
    av = v.abs()
    u = torch.where(v > 0, hi - x0, x0 - lo).clamp_min(0.0)
    clipped = torch.minimum(av, u)
    need = clipped.sum(dim=1) > eps  # rows where the box alone is not enough
    if not bool(need.any()) or math.isinf(eps):
        return torch.sign(v) * clipped
    lam_lo = torch.zeros(v.shape[0], 1, dtype=v.dtype, device=v.device)
    lam_hi = av.max(dim=1, keepdim=True).values
    for _ in range(iters):
        mid = 0.5 * (lam_lo + lam_hi)
        f = torch.minimum((av - mid).clamp_min(0.0), u).sum(dim=1, keepdim=True)
        above = f > eps
        lam_lo = torch.where(above, mid, lam_lo)
        lam_hi = torch.where(above, lam_hi, mid)
    mid = 0.5 * (lam_lo + lam_hi)
    active = (av > mid) & (av - mid < u)
    saturated = av - mid >= u
    n_active = active.sum(dim=1, keepdim=True)
    # where, not u * saturated: u is inf without a box, and inf * 0 is NaN
    s = (av * active).sum(dim=1, keepdim=True) + torch.where(saturated, u, 0.0).sum(dim=1, keepdim=True)
    lam = torch.where(n_active > 0, (s - eps) / n_active.clamp_min(1), mid)
    lam = torch.where(need.unsqueeze(1), lam.clamp_min(0.0), torch.zeros_like(lam))
    return torch.sign(v) * torch.minimum((av - lam).clamp_min(0.0), u)


_KERNEL_DTYPES = {
    "cpu": (torch.float32,),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


def _kernel_dtype(x, x0, grad) -> torch.dtype:
    """The dtype the kernel runs in: the common dtype when the device's kernel takes it, else float32."""
    ok = _KERNEL_DTYPES.get(x.device.type, ())
    if x.dtype == x0.dtype == grad.dtype and x.dtype in ok:
        return x.dtype
    return torch.float32


def pgd_step(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99):
    """One fused PGD update (the module docstring has the semantics); returns a new tensor.
    Runs the compiled kernel of x's device when there is one, else the reference."""
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    if use_kernel("pgd_step", x.device.type):
        args = (float(step), float(eps), norm, float(lo), float(hi), float(l1_quantile))
        dt = _kernel_dtype(x, x0, grad)
        if x.dtype == x0.dtype == grad.dtype == dt:
            return PGD_STEP(x, x0, grad, *args)
        return PGD_STEP(x.to(dt), x0.to(dt), grad.to(dt), *args).to(x.dtype)
    return pgd_step_reference(
        x, x0, grad, step=step, eps=eps, norm=norm, lo=lo, hi=hi, l1_quantile=l1_quantile
    )


def pgd_step_(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99):
    """In-place `pgd_step`: updates and returns x."""
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    if x.requires_grad:
        raise ValueError("pgd_step_ writes into x, which requires grad (autograd would lose track of it); "
                         "pass x.detach() or use pgd_step")
    if use_kernel("pgd_step_", x.device.type):
        dt = _kernel_dtype(x, x0, grad)
        args = (float(step), float(eps), norm, float(lo), float(hi), float(l1_quantile))
        if x.dtype == x0.dtype == grad.dtype == dt:
            PGD_STEP_(x, x0, grad, *args)
        elif x.dtype == dt:
            PGD_STEP_(x, x0.to(dt), grad.to(dt), *args)
        else:
            x.copy_(PGD_STEP(x.to(dt), x0.to(dt), grad.to(dt), *args))
        return x
    x.copy_(
        pgd_step_reference(
            x, x0, grad, step=step, eps=eps, norm=norm, lo=lo, hi=hi, l1_quantile=l1_quantile
        )
    )
    return x


# --------------------------------------------------------------------------- covariance
