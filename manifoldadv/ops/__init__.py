"""The toolkit's hot ops: the fused PGD step, per-class covariance accumulation and the fused
attack engine (`attack_engine`: K attack steps on a small convolutional network).

Public API (attacks, training and `spectrum` call only this):

- ``pgd_step(x, x0, grad, *, step, eps, norm, lo=0.0, hi=1.0, l1_quantile=0.99)`` -> new tensor
- ``pgd_step_(x, x0, grad, ...)`` -> x, updated in place
- ``ClassCovariance(num_classes, dim, device=...)`` with ``.update(features, labels)`` and
  ``.finalize() -> (counts, means, covariances)``

Each runs the compiled kernel of its device (``manifoldadv._C``, see `extension`) and has a
pure-PyTorch reference here, the fallback without the extension and the tests' oracle.
"""

from .covariance import ClassCovariance, class_cov_finalize_reference, class_cov_update_reference
from .extension import (CPU_BLAS_CHOICES, CPU_BLAS_ENV, EXTENSION_ERROR, REQUIRE_EXT_ENV, backends, cpu_blas,
                        cpu_kernel_isa, extension_loaded, require_extension, use_cpu_blas)
from .pgd import NORMS, l1_topk, pgd_step, pgd_step_, pgd_step_reference
from . import attack_engine

if extension_loaded():
    attack_engine.register_fakes()

__all__ = [
    "CPU_BLAS_CHOICES", "CPU_BLAS_ENV", "ClassCovariance", "EXTENSION_ERROR", "NORMS", "REQUIRE_EXT_ENV", "backends",
    "class_cov_finalize_reference", "class_cov_update_reference", "cpu_blas", "cpu_kernel_isa", "extension_loaded",
    "l1_topk", "pgd_step", "pgd_step_", "pgd_step_reference", "require_extension", "use_cpu_blas",
]
