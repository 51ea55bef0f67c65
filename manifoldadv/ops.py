"""The toolkit's two hot ops: the fused PGD step and per-class covariance accumulation.

Public API (stable; attacks, training and `spectrum` call only this):

- ``pgd_step(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99)`` -> new tensor
- ``pgd_step_(x, x0, grad, ...)`` -> x, updated in place
- ``ClassCovariance(num_classes, dim, device=...)`` with ``.update(features, labels)`` and
  ``.finalize() -> (counts, means, covariances)``

Each op has a pure-PyTorch reference here. It is the fallback when the compiled extension
``manifoldadv._C`` is absent and the oracle the tests compare the kernels with. Setting
``MANIFOLDADV_REQUIRE_EXT=1`` (CI does) turns a missing extension into an error instead of a
silent fallback.

Semantics of one step (batch = dim 0; every other dim is one sample):

- linf: ``x + step*sign(g)``, clip to ``[x0-eps, x0+eps]``, clip to ``[lo, hi]``.
- l2: ``x + step*g/||g||`` (no move where ``||g|| = 0``), project ``x - x0`` onto the l2 ball
  of radius eps, clip to ``[lo, hi]`` (clipping only shrinks ``|x - x0|``, so the result stays
  in the ball).
- l1 (SLIDE, Tramer & Boneh 2019): coordinates sitting on the box limit whose gradient
  pushes outward are dropped; of the rest, the ``k = clamp(n - floor(q*n + 1e-6), 1, n)``
  largest ``|g|`` (ties at the threshold included) move by ``step*sign(g)/count``; then
  ``x - x0`` is projected EXACTLY (Euclidean) onto ``{||d||_1 <= eps} ∩ {lo <= x0+d <= hi}``.
  The projection is ``d_i = sign(v_i) * clip(|v_i| - lam, 0, u_i)`` with ``u_i`` the room to
  the box in the direction of ``v_i``; ``lam`` is found by bisection and finished exactly
  from the active set (see ``_project_l1_box``).
- ``lo``/``hi`` = -inf/+inf means no box (latent-space steps); ``eps = inf`` means no ball.
- Non-finite gradient entries count as zero. A non-finite ``x`` or ``x0`` gives NaN: at that
  coordinate for linf, for the whole sample for l2 and l1. ``x0`` is assumed inside the box.
"""

from __future__ import annotations

import math
import os

import torch

from .errors import ExtensionError, UsageError

NORMS = ("linf", "l2", "l1")
REQUIRE_EXT_ENV = "MANIFOLDADV_REQUIRE_EXT"

try:  # importing the module registers torch.ops.manifoldadv.*
    from . import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    EXTENSION_ERROR = str(exc)


def extension_loaded() -> bool:
    return _C is not None


def require_extension() -> bool:
    return os.environ.get(REQUIRE_EXT_ENV, "") not in ("", "0")


def _has_kernel(op: str, device_type: str) -> bool:
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"manifoldadv::{op}", key))
    except RuntimeError:
        return False


def _use_kernel(op: str, device_type: str) -> bool:
    if _has_kernel(op, device_type):
        return True
    if require_extension():
        why = EXTENSION_ERROR or f"manifoldadv::{op} has no {device_type} kernel in this build"
        raise ExtensionError(
            f"compiled op manifoldadv::{op} unavailable on {device_type} ({why}); "
            f"rebuild with `make setup` or unset {REQUIRE_EXT_ENV}"
        )
    return False


def backends(device_types=("cpu", "cuda")) -> dict[str, dict[str, str]]:
    """Which implementation each op uses per device type: 'compiled' or 'reference'."""
    ops = {"pgd_step": "pgd_step", "pgd_step_": "pgd_step_", "class_cov": "class_cov_update_"}
    return {
        name: {dev: ("compiled" if _has_kernel(op, dev) else "reference") for dev in device_types}
        for name, op in ops.items()
    }


# --------------------------------------------------------------------------- PGD step


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
    if not (step >= 0 and eps >= 0):
        raise UsageError(f"pgd_step: step and eps must be >= 0, got step={step}, eps={eps}")
    if not lo <= hi:
        raise UsageError(f"pgd_step: need lo <= hi, got lo={lo}, hi={hi}")
    if not 0.0 <= l1_quantile < 1.0:
        raise UsageError(f"pgd_step: l1_quantile must be in [0, 1), got {l1_quantile}")


def pgd_step_reference(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99):
    """Pure-PyTorch PGD step (the oracle and the fallback). Same contract as `pgd_step`."""
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    out_dtype = x.dtype
    b = x.shape[0]
    xf, x0f = x.float().reshape(b, -1), x0.float().reshape(b, -1)
    g = grad.float().reshape(b, -1)
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    finite = torch.isfinite(xf) & torch.isfinite(x0f)
    if norm == "linf":
        y = xf + step * torch.sign(g)
        y = torch.minimum(torch.maximum(y, x0f - eps), x0f + eps)
        y = y.clamp(lo, hi)
        y = torch.where(finite, y, torch.full_like(y, float("nan")))
    elif norm == "l2":
        gn = g.norm(dim=1, keepdim=True)
        u = torch.where(gn > 0, g / gn.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(g))
        d = xf + step * u - x0f
        dn = d.norm(dim=1, keepdim=True)
        scale = torch.where(dn > eps, eps / dn, torch.ones_like(dn))
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
    s = (av * active).sum(dim=1, keepdim=True) + (u * saturated).sum(dim=1, keepdim=True)
    lam = torch.where(n_active > 0, (s - eps) / n_active.clamp_min(1), mid)
    lam = torch.where(need.unsqueeze(1), lam.clamp_min(0.0), torch.zeros_like(lam))
    return torch.sign(v) * torch.minimum((av - lam).clamp_min(0.0), u)


def pgd_step(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99):
    """One fused PGD update; returns a new tensor (see the module docstring for semantics)."""
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    if _use_kernel("pgd_step", x.device.type):
        return torch.ops.manifoldadv.pgd_step(
            x, x0, grad, float(step), float(eps), norm, float(lo), float(hi), float(l1_quantile)
        )
    return pgd_step_reference(
        x, x0, grad, step=step, eps=eps, norm=norm, lo=lo, hi=hi, l1_quantile=l1_quantile
    )


def pgd_step_(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99):
    """In-place `pgd_step`: updates and returns x."""
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    if _use_kernel("pgd_step_", x.device.type):
        torch.ops.manifoldadv.pgd_step_(
            x, x0, grad, float(step), float(eps), norm, float(lo), float(hi), float(l1_quantile)
        )
        return x
    x.copy_(
        pgd_step_reference(
            x, x0, grad, step=step, eps=eps, norm=norm, lo=lo, hi=hi, l1_quantile=l1_quantile
        )
    )
    return x


# --------------------------------------------------------------------------- covariance


def class_cov_update_reference(counts, means, m2, features, labels):
    """Chan et al.'s parallel update of per-class (count, mean, centred second moment).

    counts [C] int64, means [C, d] float64, m2 [C, d, d] float64 are updated in place from
    features [N, d] (any float dtype) and labels [N] int64. Each class's batch is centred on its
    own batch mean before the product, so large offsets do not cancel catastrophically.
    """
    feats = features.to(torch.float64)
    for c in torch.unique(labels).tolist():
        xc = feats[labels == c]
        nb = xc.shape[0]
        mb = xc.mean(dim=0)
        yc = xc - mb
        na = int(counts[c])
        n = na + nb
        delta = mb - means[c]
        m2[c] += yc.T @ yc + torch.outer(delta, delta) * (na * nb / n)
        means[c] += delta * (nb / n)
        counts[c] = n


def class_cov_finalize_reference(counts, m2):
    """Unbiased covariances m2 / (n - 1); NaN for classes with fewer than two rows (like np.cov)."""
    denom = (counts.to(torch.float64) - 1.0).view(-1, 1, 1)
    cov = m2 / denom
    cov = 0.5 * (cov + cov.transpose(1, 2))
    return torch.where(denom > 0, cov, torch.full_like(cov, float("nan")))


class ClassCovariance:
    """Streaming per-class covariance with float64 state.

    >>> acc = ClassCovariance(10, 784)
    >>> for x, y in batches: acc.update(x.flatten(1), y)
    >>> counts, means, covs = acc.finalize()
    """

    def __init__(self, num_classes: int, dim: int, device="cpu"):
        if num_classes < 1 or dim < 1:
            raise UsageError(f"ClassCovariance needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.device = torch.device(device)
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        self.means = torch.zeros(num_classes, dim, dtype=torch.float64, device=self.device)
        self.m2 = torch.zeros(num_classes, dim, dim, dtype=torch.float64, device=self.device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> "ClassCovariance":
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise UsageError(f"features must be [N, {self.dim}], got {tuple(features.shape)}")
        if labels.shape != (features.shape[0],):
            raise UsageError(f"labels must be [{features.shape[0]}], got {tuple(labels.shape)}")
        if features.shape[0] == 0:
            return self
        labels = labels.to(device=self.device, dtype=torch.int64)
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            raise UsageError(f"labels must be in [0, {self.num_classes}), got range [{lo}, {hi}]")
        features = features.to(self.device)
        if _use_kernel("class_cov_update_", self.device.type):
            torch.ops.manifoldadv.class_cov_update_(
                self.counts, self.means, self.m2, features.contiguous(), labels.contiguous()
            )
        else:
            class_cov_update_reference(self.counts, self.means, self.m2, features, labels)
        return self

    def finalize(self):
        """(counts [C], means [C, d], covariances [C, d, d]) all float64 but counts."""
        if _has_kernel("class_cov_finalize", self.device.type):
            cov = torch.ops.manifoldadv.class_cov_finalize(self.counts, self.m2)
        else:
            cov = class_cov_finalize_reference(self.counts, self.m2)
        return self.counts.clone(), self.means.clone(), cov
