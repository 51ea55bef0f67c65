"""Streaming per-class covariance (`ClassCovariance`) with float64 state, and the pure-PyTorch
reference of its update and finalize.

``m2`` keeps only its upper triangle current (the kernel updates upper-triangular blocks with
float64 GEMMs, half the work of a full product); ``finalize`` mirrors it. On CPU with several
threads and at least as many (balanced) classes as threads, each thread takes whole classes
and runs their gather and single-threaded BLAS itself; otherwise classes go one at a time with
the threads inside the gather and BLAS (``csrc/class_cov_cpu.cpp``). Where each product runs on
one thread, the CPU kernel uses SciPy's OpenBLAS ``dsyrk`` when it can (``extension.use_cpu_blas``;
``csrc/cpu_blas.cpp`` says why).
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from . import extension

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
        if extension.use_kernel("class_cov_update_", self.device.type):
            if self.device.type == "cpu":
                extension.cpu_blas()  # chosen once, before the first CPU update
            torch.ops.manifoldadv.class_cov_update_(
                self._counts, self._means, self._m2, features.contiguous(), labels.contiguous()
            )
        else:
            class_cov_update_reference(self._counts, self._means, self._m2, features, labels)

    def all_reduce(self) -> "ClassCovariance":
        """With several processes, every process's state merged into every process's, by Chan's
        update in rank order (the merge the kernel does between batches), so the result is the
        one process's to float64 rounding."""
        from ..runtime import distributed

        if distributed.world() == 1:
            return self
        self.flush()
        self._m2[self._counts == 0] = 0.0  # unwritten blocks of classes this process never saw
        counts, means, m2 = (distributed.all_gather(t) for t in (self._counts, self._means, torch.triu(self._m2)))
        na, ma, ma2 = counts[0].double(), means[0], m2[0]
        for nb, mb, mb2 in zip(counts[1:], means[1:], m2[1:]):
            nb = nb.double()
            n = na + nb
            delta = mb - ma
            w = torch.where(n > 0, na * nb / n.clamp_min(1), torch.zeros_like(n))
            ma2 = ma2 + mb2 + w.view(-1, 1, 1) * delta.unsqueeze(2) * delta.unsqueeze(1)
            ma = ma + delta * torch.where(n > 0, nb / n.clamp_min(1), torch.zeros_like(n)).unsqueeze(1)
            na = n
        self._counts.copy_(na.to(torch.int64))
        self._means.copy_(ma)
        self._m2.copy_(torch.triu(ma2))
        return self

    def finalize(self):
        """(counts [C], means [C, d], covariances [C, d, d]) all float64 but counts."""
        self.flush()
        if extension.use_kernel("class_cov_finalize", self.device.type):
            cov = torch.ops.manifoldadv.class_cov_finalize(self._counts, self._m2)
        else:
            cov = class_cov_finalize_reference(self._counts, self._m2)
        return self._counts.clone(), self._means.clone(), cov
