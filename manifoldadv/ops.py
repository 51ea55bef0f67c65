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
- ``step`` must be finite and >= 0; ``eps`` >= 0 (inf allowed); ``lo <= hi``. An empty batch or
  empty samples give an empty result.
- dtypes: the step is computed in float32 and returned in ``x``'s dtype. The CPU kernel takes
  float32 only (the op raises a clear error otherwise); the CUDA kernel takes float32, float16
  or bfloat16 when x, x0 and grad share that dtype. The public functions here upcast anything
  else to float32 first, so every dtype works everywhere with the reference's semantics.

Compiled kernels (``csrc/``): one fused pass per sample for linf; for l2 one read pass giving
``||g||^2``, ``<x-x0, g>`` and ``||x-x0||^2`` in float64, then one write pass. For l1 the SLIDE
threshold is a radix selection (CPU: histogram of the float bits + ``nth_element`` inside one
bin; CUDA: radix select over the bits) and the projection's ``lam`` is found by BISECTION on a
bracket, accelerated by Newton steps, never by sorting: each pass is one branch-free vectorised
(CPU) or block-reduced (CUDA) sweep that also yields the linear piece of F through the point,
whose root is exact once the piece is the right one (typically 4-6 passes instead of the 64 of
the reference, and no O(n log n) sort or 2n-value buffer per sample). See
``csrc/pgd_step_kernel.h`` for the details and the guarantee (the bracket at least halves every
two passes).

Per-class covariance: ``m2`` keeps only its upper triangle current (the kernel updates upper-
triangular blocks with float64 GEMMs, half the work of a full product); ``finalize`` mirrors it.
On CPU with several threads and at least as many (balanced) classes as threads, each thread
takes whole classes and runs their gather and single-threaded BLAS itself; otherwise classes go
one at a time with the threads inside the gather and BLAS (``csrc/class_cov_cpu.cpp``).
Where each product runs on one thread, the CPU kernel uses SciPy's OpenBLAS ``dsyrk`` when it
can (``use_cpu_blas``; ``MANIFOLDADV_CPU_BLAS=torch`` keeps torch's own BLAS; see
``csrc/cpu_blas.cpp`` for why and for the thread-count handling).
"""

from __future__ import annotations

import math
import os

import torch

from .errors import ExtensionError, UsageError

NORMS = ("linf", "l2", "l1")
REQUIRE_EXT_ENV = "MANIFOLDADV_REQUIRE_EXT"
CPU_BLAS_ENV = "MANIFOLDADV_CPU_BLAS"
CPU_BLAS_CHOICES = ("auto", "torch")

try:  # importing the module registers torch.ops.manifoldadv.*
    from . import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    EXTENSION_ERROR = str(exc)


if _C is not None:
    _PGD_STEP = torch.ops.manifoldadv.pgd_step.default
    _PGD_STEP_ = torch.ops.manifoldadv.pgd_step_.default

    # Fake (meta) kernels: shapes and dtypes only, for torch.compile / FakeTensor / opcheck.
    @torch.library.register_fake("manifoldadv::pgd_step")
    def _pgd_step_fake(x, x0, grad, step, eps, norm, lo, hi, l1_quantile):
        torch._check(x.shape == x0.shape and x.shape == grad.shape, lambda: "pgd_step: shapes differ")
        torch._check(x.dim() >= 1, lambda: "pgd_step: tensors need a batch dimension")
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    @torch.library.register_fake("manifoldadv::pgd_step_")
    def _pgd_step__fake(x, x0, grad, step, eps, norm, lo, hi, l1_quantile):
        torch._check(x.shape == x0.shape and x.shape == grad.shape, lambda: "pgd_step_: shapes differ")
        return None

    @torch.library.register_fake("manifoldadv::class_cov_update_")
    def _class_cov_update__fake(counts, means, m2, features, labels):
        return None

    @torch.library.register_fake("manifoldadv::class_cov_finalize")
    def _class_cov_finalize_fake(counts, m2):
        torch._check(m2.dim() == 3 and m2.shape[1] == m2.shape[2], lambda: "m2 must be [C, d, d]")
        return torch.empty(m2.shape, dtype=torch.float64, device=m2.device)
else:  # pragma: no cover - exercised only without a build
    _PGD_STEP = _PGD_STEP_ = None


def extension_loaded() -> bool:
    return _C is not None


def require_extension() -> bool:
    return os.environ.get(REQUIRE_EXT_ENV, "") not in ("", "0")


_KERNEL_CACHE: dict[tuple[str, str], bool] = {}


def _has_kernel(op: str, device_type: str) -> bool:
    # Registrations happen once, when _C is imported, so the answer is cached (the dispatcher
    # query costs a few microseconds, as much as a small step).
    hit = _KERNEL_CACHE.get((op, device_type))
    if hit is not None:
        return hit
    found = False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if _C is not None and key is not None:
        try:
            found = bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"manifoldadv::{op}", key))
        except RuntimeError:
            found = False
    _KERNEL_CACHE[(op, device_type)] = found
    return found


def cpu_kernel_isa() -> str | None:
    """The CPU kernel table the extension uses ('avx2' or 'default'), None without it."""
    return _C.cpu_isa() if _C is not None else None


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


_CPU_BLAS: str | None = None  # what use_cpu_blas chose, None until it has run


def _torch_blas() -> str:
    return "torch's MKL dgemm" if torch.backends.mkl.is_available() else "torch's BLAS dgemm"


def use_cpu_blas(choice: str = "auto") -> str:
    """Choose the BLAS of the CPU covariance kernel's float64 products; returns what it uses.

    ``"auto"``: SciPy's OpenBLAS ``dsyrk`` (from ``scipy.linalg.cython_blas``, SciPy's public
    BLAS API for compiled code) when SciPy has one whose thread count can be set, else torch's
    own BLAS; ``"torch"``: torch's own BLAS. The first covariance update on CPU makes this
    choice from ``MANIFOLDADV_CPU_BLAS`` (default ``auto``) unless it was made already.
    While an update runs with SciPy's OpenBLAS, that library is single-threaded (process-wide;
    restored afterwards).
    """
    global _CPU_BLAS
    if choice not in CPU_BLAS_CHOICES:
        raise UsageError(f"CPU BLAS must be one of {', '.join(CPU_BLAS_CHOICES)}, got {choice!r}")
    if _C is None:
        _CPU_BLAS = "none (no compiled extension)"
        return _CPU_BLAS
    why = "not asked for"
    if choice == "auto":
        try:
            from scipy.linalg import cython_blas

            why = _C.use_dsyrk(cython_blas.__pyx_capi__["dsyrk"])
        except (ImportError, AttributeError, KeyError) as e:
            why = f"SciPy's Cython BLAS is unavailable ({type(e).__name__}: {e})"
        if not why:
            _CPU_BLAS = f"SciPy's OpenBLAS dsyrk ({_C.dsyrk_info()[0]})"
            return _CPU_BLAS
    refused = _C.use_dsyrk(None)
    if refused:  # an update holds the current choice
        raise RuntimeError(f"cannot change the CPU BLAS now: {refused}")
    _CPU_BLAS = f"{_torch_blas()} (SciPy's dsyrk: {why})"
    return _CPU_BLAS


def cpu_blas() -> str:
    """What the CPU covariance kernel uses for its products (choosing it first if needed)."""
    if _CPU_BLAS is None:
        use_cpu_blas(os.environ.get(CPU_BLAS_ENV, "auto") or "auto")
    return _CPU_BLAS


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
    """One fused PGD update; returns a new tensor (see the module docstring for semantics).

    Runs the compiled kernel of x's device when there is one (else the reference). For l1
    the kernel finds the SLIDE threshold by radix selection and the projection's threshold
    ``lam`` by bisection accelerated with exact Newton steps on the piecewise-linear
    ``F(lam) = eps``, not by sorting: O(n) per pass, a handful of passes, no sort buffer, and
    the same iteration maps onto one CUDA block per sample; the result is the exact projection
    (float64), equal to the reference's to float32 rounding.
    """
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    if _use_kernel("pgd_step", x.device.type):
        args = (float(step), float(eps), norm, float(lo), float(hi), float(l1_quantile))
        dt = _kernel_dtype(x, x0, grad)
        if x.dtype == x0.dtype == grad.dtype == dt:
            return _PGD_STEP(x, x0, grad, *args)
        return _PGD_STEP(x.to(dt), x0.to(dt), grad.to(dt), *args).to(x.dtype)
    return pgd_step_reference(
        x, x0, grad, step=step, eps=eps, norm=norm, lo=lo, hi=hi, l1_quantile=l1_quantile
    )


def pgd_step_(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99):
    """In-place `pgd_step`: updates and returns x."""
    _check_step_args(x, x0, grad, step, eps, norm, lo, hi, l1_quantile)
    if x.requires_grad:
        raise ValueError("pgd_step_ writes into x, which requires grad (autograd would lose track of it); "
                         "pass x.detach() or use pgd_step")
    if _use_kernel("pgd_step_", x.device.type):
        dt = _kernel_dtype(x, x0, grad)
        args = (float(step), float(eps), norm, float(lo), float(hi), float(l1_quantile))
        if x.dtype == x0.dtype == grad.dtype == dt:
            _PGD_STEP_(x, x0, grad, *args)
        elif x.dtype == dt:
            _PGD_STEP_(x, x0.to(dt), grad.to(dt), *args)
        else:
            x.copy_(_PGD_STEP(x.to(dt), x0.to(dt), grad.to(dt), *args))
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
    own batch mean before the product, so large offsets do not cancel catastrophically. The m2
    block of a class whose count is 0 is not read (it is overwritten), so a fresh m2 may hold
    anything; counts and means start at zero.
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
        if na == 0:
            m2[c] = yc.T @ yc
        else:
            m2[c] += yc.T @ yc + torch.outer(delta, delta) * (na * nb / n)
        means[c] += delta * (nb / n)
        counts[c] = n


def class_cov_finalize_reference(counts, m2):
    """Unbiased covariances m2 / (n - 1); NaN for classes with fewer than two rows (like np.cov).

    Only the upper triangle of m2 is read (the compiled update keeps only that one current);
    the result mirrors it, so it is exactly symmetric.
    """
    denom = (counts.to(torch.float64) - 1.0).view(-1, 1, 1)
    upper = torch.triu(m2)
    cov = (upper + torch.triu(m2, diagonal=1).transpose(1, 2)) / denom
    return torch.where(denom > 0, cov, torch.full_like(cov, float("nan")))


class ClassCovariance:
    """Streaming per-class covariance with float64 state.

    >>> acc = ClassCovariance(10, 784)
    >>> for x, y in batches: acc.update(x.flatten(1), y)
    >>> counts, means, covs = acc.finalize()

    Small batches are buffered (``buffer_rows``, default 8192 rows) and merged together: every
    merge reads and writes the whole ``[C, d, d]`` state, so merging per 64-row batch would cost
    more than the products themselves. The result does not depend on the buffering (Chan's
    merge is exact); ``buffer_rows=0`` merges every batch at once. Reading ``counts``, ``means``
    or ``m2`` flushes the buffer first. Only the upper triangle of ``m2`` is kept current, and
    only for classes that have rows: the rest of ``m2`` is uninitialised memory.
    """

    def __init__(self, num_classes: int, dim: int, device="cpu", *, buffer_rows: int = 8192):
        if num_classes < 1 or dim < 1:
            raise UsageError(f"ClassCovariance needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        if buffer_rows < 0:
            raise UsageError(f"buffer_rows must be >= 0, got {buffer_rows}")
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.device = torch.device(device)
        self.buffer_rows = int(buffer_rows)
        self._counts = torch.zeros(num_classes, dtype=torch.int64, device=self.device)
        self._means = torch.zeros(num_classes, dim, dtype=torch.float64, device=self.device)
        # Not zeroed: a class's first merge overwrites its block (755 MB at 10 x 3072^2, where
        # zeroing cost 0.15-0.4 s and faulted in the lower triangle, which is never used).
        self._m2 = torch.empty(num_classes, dim, dim, dtype=torch.float64, device=self.device)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_rows = 0

    @property
    def counts(self) -> torch.Tensor:
        self.flush()
        return self._counts

    @property
    def means(self) -> torch.Tensor:
        self.flush()
        return self._means

    @property
    def m2(self) -> torch.Tensor:
        self.flush()
        return self._m2

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> "ClassCovariance":
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise UsageError(f"features must be [N, {self.dim}], got {tuple(features.shape)}")
        if labels.shape != (features.shape[0],):
            raise UsageError(f"labels must be [{features.shape[0]}], got {tuple(labels.shape)}")
        if not features.is_floating_point():
            raise UsageError(f"features must be a floating-point tensor, got {features.dtype}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if features.shape[0] == 0:
            return self
        if labels.device.type == "cpu":  # free to check now; labels on a GPU are checked per merge
            self._check_labels(labels)
        labels = labels.to(device=self.device, dtype=torch.int64)
        # float32 and float64 go to the kernel as they are; other dtypes widen exactly to float32
        if features.dtype not in (torch.float32, torch.float64):
            features = features.float()
        features = features.to(self.device)
        if features.shape[0] >= self.buffer_rows and not self._pending:
            self._merge(features, labels)
            return self
        self._pending.append((features.detach().clone(), labels.clone()))
        self._pending_rows += features.shape[0]
        if self._pending_rows >= self.buffer_rows:
            self.flush()
        return self

    def flush(self) -> "ClassCovariance":
        """Merge the buffered rows into the state."""
        if not self._pending:
            return self
        feats, labs = zip(*self._pending)
        self._pending, self._pending_rows = [], 0
        if len(feats) == 1:
            self._merge(feats[0], labs[0])
        else:
            dt = torch.float64 if any(f.dtype == torch.float64 for f in feats) else torch.float32
            self._merge(torch.cat([f.to(dt) for f in feats]), torch.cat(labs))
        return self

    def _check_labels(self, labels: torch.Tensor) -> None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            raise UsageError(f"labels must be in [0, {self.num_classes}), got range [{lo}, {hi}]")

    def _merge(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        # per merge (every `buffer_rows` rows), not per update: on a GPU each check waits for it
        if labels.device.type != "cpu":
            self._check_labels(labels)
        if _use_kernel("class_cov_update_", self.device.type):
            if self.device.type == "cpu" and _CPU_BLAS is None:
                cpu_blas()
            torch.ops.manifoldadv.class_cov_update_(
                self._counts, self._means, self._m2, features.contiguous(), labels.contiguous()
            )
        else:
            class_cov_update_reference(self._counts, self._means, self._m2, features, labels)

    def finalize(self):
        """(counts [C], means [C, d], covariances [C, d, d]) all float64 but counts."""
        self.flush()
        if _has_kernel("class_cov_finalize", self.device.type):
            cov = torch.ops.manifoldadv.class_cov_finalize(self._counts, self._m2)
        else:
            cov = class_cov_finalize_reference(self._counts, self._m2)
        return self._counts.clone(), self._means.clone(), cov
