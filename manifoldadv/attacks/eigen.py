"""The eigenspace attacks (Xiao et al., arXiv 2210.00430): the perturbation lies in the example's
class eigenspace span(U_y) (`eigen`: on the manifold, l2) or is orthogonal to it (`eigen-off`,
l-inf, and `eigen-off-l2`: off the manifold). U_y: the class's top-k covariance eigenvectors
(evaluation/eigenbasis.py).

How the subspace and the box [0, 1] combine: a parametrisation, then a clamp. The loop every
attack runs (`maximize`) moves a parameter p and the perturbation is a function of it that lies in
its subspace by construction: on the manifold, delta = U_y c for coefficients c in R^k (U_y's
columns are orthonormal, so ||delta||_2 = ||c||_2 and the ball on c is the ball on delta); off it,
delta = (I - U_y U_y^T) v for a v in the norm ball (the projection never lengthens v in l2; in
l-inf it can, and delta is then scaled back into the ball, which keeps it orthogonal). The image
is clamp(x0 + delta, 0, 1): the model sees it and the gradient flows through it. The clamp moves
every pixel towards x0, so the budget holds, but it can move the perturbation out of its subspace;
`record` measures by how much (the share of the final perturbation's squared norm in the subspace).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError


class ClassSpan:
    """span(U_y) for a batch of labels y: coefficients U_y^T v and vectors U_y c, one matrix
    product per class present (a gathered [N, D, k] basis would not fit a CIFAR-10 batch)."""

    def __init__(self, basis, y: torch.Tensor, dtype: torch.dtype):
        self.u = basis.placed(y.device, dtype)  # [C, D, k]
        self.order = torch.argsort(y, stable=True)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(len(y), device=y.device)
        counts = torch.bincount(y, minlength=len(self.u)).tolist()  # one read of the device per batch
        if len(counts) > len(self.u):
            raise UsageError(f"labels up to {len(counts) - 1}, but the eigenbasis has {len(self.u)} classes")
        self.groups = [(c, n) for c, n in enumerate(counts) if n]

    def _apply(self, rows: torch.Tensor, transpose: bool) -> torch.Tensor:
        parts = rows[self.order].split([n for _, n in self.groups])
        out = [p @ (self.u[c].T if transpose else self.u[c]) for (c, _), p in zip(self.groups, parts)]
        return torch.cat(out)[self.inverse]

    def coefficients(self, v: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [N, k]: U_y^T v."""
        return self._apply(v.reshape(len(v), -1), transpose=False)

    def vectors(self, c: torch.Tensor, shape) -> torch.Tensor:
        """[N, k] -> [N, *shape]: U_y c."""
        return self._apply(c, transpose=True).reshape(len(c), *shape)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        return self.vectors(self.coefficients(v), v.shape[1:])

    def orthogonal(self, v: torch.Tensor) -> torch.Tensor:
        return v - self.project(v)


def perturbation(span: ClassSpan, p: torch.Tensor, spec, shape) -> torch.Tensor:
    """delta(p), in its subspace by construction (see the module's docstring)."""
    if spec.kind.subspace == "on":
        return span.vectors(p, shape)
    delta = span.orthogonal(p)
    if spec.norm == "linf":
        peak = delta.flatten(1).abs().amax(1).clamp_min(1e-30)
        delta = delta * (spec.eps / peak).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    return delta


def search(model, x: torch.Tensor, y: torch.Tensor, spec, basis, *, maximize, generator=None, shard=None,
           record: dict | None = None) -> torch.Tensor:
    """Adversarial images clamp(x + delta, 0, 1) with delta in the subspace `spec` names.

    record gets "unboxed" (delta before the clamp) and the sums over the batch of the final
    perturbation's squared norm ("total_sq"), of its part in the intended subspace
    ("subspace_sq") and of delta's ("unboxed_sq")."""
    if basis is None:
        raise UsageError(f"attack {spec.name} needs the class eigenbasis (evaluation.eigenbasis.obtain)")
    span = ClassSpan(basis, y, x.dtype)
    shape = x.shape[1:]
    on = spec.kind.subspace == "on"
    p0 = x.new_zeros(len(x), basis.k) if on else torch.zeros_like(x)

    def image(p):
        return (x + perturbation(span, p, spec, shape)).clamp(0.0, 1.0)

    loss = lambda p: F.cross_entropy(model(image(p)), y, reduction="none")  # noqa: E731
    fooled = lambda p: model(image(p)).argmax(1) != y  # noqa: E731
    p = maximize(loss, p0, spec, lo=-math.inf, hi=math.inf, generator=generator, fooled=fooled, shard=shard)
    with torch.no_grad():
        delta = perturbation(span, p, spec, shape)
        x_adv = (x + delta).clamp(0.0, 1.0)
        if record is not None:
            final = x_adv - x
            inside = span.project(final) if on else span.orthogonal(final)
            record.update(unboxed=delta, total_sq=final.double().pow(2).sum(), unboxed_sq=delta.double().pow(2).sum(),
                          subspace_sq=inside.double().pow(2).sum())
    return x_adv
