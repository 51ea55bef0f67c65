"""The manifold's second approximation: each class's eigenspace, the span of the top-k
eigenvectors of its covariance on the training split (Xiao et al., arXiv 2210.00430; their
code keeps the top 100 on MNIST). Computed once per data set and k in float64 through the
covariance op, and cached as a safetensors file keyed by the training split's digest and k."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..data import Split, split_digest
from ..errors import UsageError
from ..runtime import console
from ..runtime.outputs import atomic_write_bytes
from .spectrum import accumulate

FORMAT = "manifoldadv-eigenbasis-2"  # 2: with each class's total variance


@dataclass(frozen=True)
class EigenBasis:
    dataset: str
    digest: str  # of the training split (split_digest)
    k: int
    vectors: torch.Tensor  # [C, D, k] float64, orthonormal columns, by descending eigenvalue
    values: torch.Tensor  # [C, k] float64, descending
    counts: torch.Tensor  # [C] training examples per class
    totals: torch.Tensor  # [C] float64, each class's total variance (the covariance's trace)
    means: torch.Tensor | None = field(default=None, repr=False, compare=False)  # [C, D] float64, from compute()
    _placed: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def explained(self) -> torch.Tensor:
        """[C]: the share of each class's variance its top k directions hold."""
        return self.values.sum(1) / self.totals.clamp_min(1e-300)

    def placed(self, device, dtype) -> torch.Tensor:
        """The vectors on `device` in `dtype`, converted once."""
        key = (str(device), dtype)
        if key not in self._placed:
            self._placed[key] = self.vectors.to(device, dtype).contiguous()
        return self._placed[key]

    def describe(self) -> dict:
        """What a result records of the basis it used."""
        return {"dataset": self.dataset, "digest": self.digest, "k": self.k,
                "explained_min": round(float(self.explained.min()), 4),
                "explained_mean": round(float(self.explained.mean()), 4)}

    def project(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """U_y U_y^T v per example: the part of v inside its class's eigenspace (v: [N, ...])."""
        u = self.vectors.to(v.device, v.dtype)[y]  # [N, D, k]
        flat = v.reshape(len(v), -1)
        return torch.einsum("ndk,nk->nd", u, torch.einsum("ndk,nd->nk", u, flat)).reshape(v.shape)

    def orthogonal(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The part of v orthogonal to its class's eigenspace."""
        return v - self.project(v, y)


def check(split: Split, num_classes: int, k: int) -> None:
    """k fits the data: at most its dimension, and every class has more than k examples."""
    dim = int(split.x[0].numel())
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= dim:
        raise UsageError(f"the eigenspace size k must be a whole number from 1 to the dimension {dim}, got {k!r}")
    counts = torch.bincount(split.y.cpu().long(), minlength=num_classes)
    short = [c for c in range(num_classes) if int(counts[c]) <= k]
    if short:  # fewer than k + 1 examples span at most k - 1 directions beyond their mean
        c = short[0]
        raise UsageError(f"class {c} has {int(counts[c])} training examples: a {k}-dimensional eigenspace needs "
                         f"more than {k}; choose a smaller k")


def compute(split: Split, num_classes: int, k: int, *, dataset: str, device="cpu", gram: bool | None = None) -> EigenBasis:
    """The top-k eigenvectors of every class's covariance on `split` (float64): from the
    covariance op's D x D matrix, or, for a class with fewer examples than dimensions (gram None:
    decided per class; True/False: forced), from the n x n Gram matrix of its centred examples,
    whose nonzero eigenvalues are the covariance's and whose eigenvectors X^T v / sqrt((n-1) w) are
    its eigenvectors: CIFAR-10's 3072 x 3072 eigenproblem costs a second per class, a 200 x 200
    one nothing."""
    import numpy as np
    import scipy.linalg

    check(split, num_classes, k)
    counts, means, covs = accumulate(split, range(num_classes), device=device)
    covs = covs.double().cpu()
    dim = covs.shape[-1]
    y = split.y.cpu()
    values, vectors = [], []
    for c in range(num_classes):
        n = int(counts[c])
        if gram if gram is not None else n <= dim:
            x = split.images((y == c).nonzero().squeeze(1)).reshape(n, -1).double().cpu().numpy()
            x = x - x.mean(0)
            w, v = scipy.linalg.eigh(x @ x.T / (n - 1), subset_by_index=[n - k, n - 1])
            u = x.T @ v / np.sqrt(np.maximum(w, 1e-300) * (n - 1))
        else:  # the top k alone: a full eigh of a large covariance takes seconds
            w, u = scipy.linalg.eigh(covs[c].numpy(), subset_by_index=[dim - k, dim - 1])  # ascending
        values.append(torch.from_numpy(w[::-1].copy()))
        vectors.append(torch.from_numpy(u[:, ::-1].copy()))
    return EigenBasis(dataset, split_digest(split), k, torch.stack(vectors).contiguous(), torch.stack(values).contiguous(),
                      counts.cpu(), torch.diagonal(covs, dim1=-2, dim2=-1).sum(-1), means.double().cpu())


def save(path, basis: EigenBasis) -> None:
    meta = {"format": FORMAT, "dataset": basis.dataset, "digest": basis.digest, "k": basis.k}
    tensors = {"vectors": basis.vectors, "values": basis.values, "counts": basis.counts, "totals": basis.totals}
    blob = st_save({name: t.contiguous() for name, t in tensors.items()},
                   metadata={"manifoldadv": json.dumps(meta)})
    atomic_write_bytes(Path(path), blob)


def load(path, *, dataset: str, digest: str, k: int | None) -> EigenBasis:
    """A saved basis, refused (one line) unless it was made from this data set's training split
    with this k (None: the file's)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get("manifoldadv", "{}"))
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise UsageError(f"{path} is not a readable eigenbasis ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if meta.get("format") != FORMAT or set(tensors) != {"vectors", "values", "counts", "totals"}:
        raise UsageError(f"{path} is not a manifoldadv eigenbasis")
    k = meta.get("k") if k is None else k
    if (meta.get("dataset"), meta.get("digest"), meta.get("k")) != (dataset, digest, k):
        raise UsageError(f"{path} is the eigenbasis of {meta.get('dataset')} (training split {meta.get('digest')}, "
                         f"k {meta.get('k')}), not of {dataset} (training split {digest}, k {k})")
    return EigenBasis(dataset, digest, k, tensors["vectors"], tensors["values"], tensors["counts"], tensors["totals"])


CACHE_ENV = "MANIFOLDADV_CACHE"


def cache_dir() -> Path:
    """Where bases are kept by default: $MANIFOLDADV_CACHE, else ~/.cache/manifoldadv."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "manifoldadv").expanduser() / "eigenbasis"


def obtain(split: Split, num_classes: int, k: int | None, *, dataset: str, cache_dir=None, path=None,
           device="cpu") -> EigenBasis:
    """The basis of this split and k: read from `path` (or, without one, from `cache_dir`, by
    default `cache_dir()`) when it is there, else computed and written there. k None: the file's
    at `path`, else the data set's default."""
    digest = split_digest(split)
    if k is None and (path is None or not Path(path).exists()):
        from ..config import defaults

        k = defaults(dataset).eigen.k
    if path is None:
        from ..data.external import slug

        path = Path(cache_dir or globals()["cache_dir"]()) / f"{slug(dataset)}-eigenbasis-k{k}-{digest}.safetensors"
    path = Path(path)
    if path.exists():
        return load(path, dataset=dataset, digest=digest, k=k)
    check(split, num_classes, k)
    console.log(f"computing the top-{k} eigenvectors of each class's covariance ({dataset}, {len(split)} examples)")
    basis = compute(split, num_classes, k, dataset=dataset, device=device)
    save(path, basis)
    return basis
