"""The compiled extension manifoldadv._C: loading it, its fake (meta) kernels for torch.compile,
which backend each op uses, and the CPU covariance kernel's choice of BLAS.

Setting ``MANIFOLDADV_REQUIRE_EXT=1`` (CI does) turns a missing compiled op into an error instead
of a silent fallback to the PyTorch reference.
"""

from __future__ import annotations

import os

import torch

from ..errors import ExtensionError, UsageError

REQUIRE_EXT_ENV = "MANIFOLDADV_REQUIRE_EXT"
CPU_BLAS_ENV = "MANIFOLDADV_CPU_BLAS"
CPU_BLAS_CHOICES = ("auto", "torch")

try:  # importing the module registers torch.ops.manifoldadv.*
    from .. import _C  # noqa: F401

    EXTENSION_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    EXTENSION_ERROR = str(exc)


if _C is not None:
    PGD_STEP = torch.ops.manifoldadv.pgd_step.default
    PGD_STEP_ = torch.ops.manifoldadv.pgd_step_.default

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
    PGD_STEP = PGD_STEP_ = None


def extension_loaded() -> bool:
    return _C is not None


def require_extension() -> bool:
    return os.environ.get(REQUIRE_EXT_ENV, "") not in ("", "0")


_KERNEL_CACHE: dict[tuple[str, str], bool] = {}


def has_kernel(op: str, device_type: str) -> bool:
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


def use_kernel(op: str, device_type: str) -> bool:
    if has_kernel(op, device_type):
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
    ops = {"pgd_step": "pgd_step", "pgd_step_": "pgd_step_", "class_cov": "class_cov_update_",
           "fused_attack": "fused_attack"}
    return {
        name: {dev: ("compiled" if has_kernel(op, dev) else "reference") for dev in device_types}
        for name, op in ops.items()
    }


# --------------------------------------------------------------------------- PGD step
