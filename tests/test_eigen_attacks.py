"""The eigenspace attacks against float64 numpy: the perturbation before the box lies in the
example's class eigenspace (`eigen`) or is orthogonal to it (`eigen-off`, `eigen-off-l2`), within
its budget; on a linear model they reach the closed-form smallest distance in their subspace; the
box's effect is measured as numpy measures it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from manifoldadv.attacks import make_spec, perturb, with_overrides
from manifoldadv.attacks.eigen import ClassSpan
from manifoldadv.data import Split
from manifoldadv.evaluation import attack_accuracy, batch_generator
from manifoldadv.evaluation.eigenbasis import EigenBasis

C, SHAPE, K = 3, (1, 6, 6), 5
D = int(np.prod(SHAPE))


def random_basis(seed=0, k=K) -> EigenBasis:
    """Each class's top-k eigenvectors of a random float64 covariance (numpy's eigh)."""
    rng = np.random.default_rng(seed)
    vectors, values = [], []
    for _ in range(C):
        a = rng.standard_normal((D, D))
        w, v = np.linalg.eigh(a @ a.T)
        vectors.append(v[:, ::-1][:, :k])
        values.append(w[::-1][:k])
    return EigenBasis("synthetic", "0" * 16, k, torch.tensor(np.stack(vectors)), torch.tensor(np.stack(values)),
                      torch.full((C,), 100), torch.ones(C, dtype=torch.float64))


def batch(n=24, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(n, *SHAPE, generator=g)
    return x, torch.arange(n) % C


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, C))


def numpy_projection(basis: EigenBasis, v: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """U_y U_y^T v in float64 through numpy's least squares (no use of the code under test)."""
    flat = v.detach().double().reshape(len(v), -1).numpy()
    out = np.empty_like(flat)
    for i, c in enumerate(y.tolist()):
        u = basis.vectors[c].numpy()
        coef = np.linalg.lstsq(u, flat[i], rcond=None)[0]
        out[i] = u @ coef
    return out


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


def test_class_span_matches_numpy():
    basis = random_basis()
    x, _ = batch(30)
    y = torch.tensor([2, 0, 0, 1, 2, 2] * 5)  # unsorted, every class, repeated
    span = ClassSpan(basis, y, torch.float64)
    want = numpy_projection(basis, x, y)
    got = span.project(x.double()).reshape(len(x), -1).numpy()
    assert np.abs(got - want).max() < 1e-12
    coef = span.coefficients(x.double()).numpy()
    flat = x.double().reshape(len(x), -1).numpy()
    want_coef = np.stack([basis.vectors[c].numpy().T @ flat[i] for i, c in enumerate(y.tolist())])
    assert np.abs(coef - want_coef).max() < 1e-12


@pytest.mark.parametrize("name", ["eigen", "eigen-off", "eigen-off-l2"])
@pytest.mark.parametrize("restarts", [1, 3])
def test_perturbation_before_the_box_is_in_its_subspace_and_budget(name, restarts):
    """In span(U_y) (eigen) or orthogonal to it (the off attacks) to 1e-5 relative, within the
    budget; the images are in [0, 1] and the attack moved them."""
    basis, model = random_basis(), mlp()
    x, y = batch()
    spec = with_overrides(make_spec(name, "synthetic"), restarts=restarts, eps=0.3 if name == "eigen-off" else 1.5)
    record = {}
    x_adv = perturb(model, x, y, spec, basis=basis, generator=torch.Generator().manual_seed(1), record=record)
    delta = record["unboxed"].double().reshape(len(x), -1)
    inside = numpy_projection(basis, delta, y)
    d = delta.numpy()
    off_part = d - inside if name == "eigen" else inside
    assert relative(off_part, d).max() < 1e-5
    assert np.linalg.norm(d, axis=1).min() > 0.1 * spec.eps  # it moved
    if spec.norm == "l2":
        assert np.linalg.norm(d, axis=1).max() <= spec.eps * (1 + 1e-5)
    else:
        assert np.abs(d).max() <= spec.eps * (1 + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # the image is x + delta clamped to the box
    assert torch.equal(x_adv, (x + record["unboxed"]).clamp(0, 1))


def linear_model(seed=0):
    """Two classes, logits W x + b, the boundary through the centre of the box."""
    torch.manual_seed(seed)
    lin = nn.Linear(D, 2)
    with torch.no_grad():
        lin.weight.normal_(0, 1.0)
        lin.bias.copy_(-0.5 * lin.weight.sum(1))  # the boundary through the box's centre
    return nn.Sequential(nn.Flatten(), lin)


@pytest.mark.parametrize("name", ["eigen", "eigen-off-l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_reaches_the_closed_form_smallest_distance_on_a_linear_model(name, random_start):
    """For logits W x + b the smallest l2 perturbation in a subspace S that flips class y is
    margin / ||P_S (w_y - w_other)||: with eps 0.1% above it every example is fooled, 0.1% below
    none is (the box is far: x = 0.5 and the distances are small)."""
    basis, model = random_basis(k=K), linear_model()
    x = torch.full((40, *SHAPE), 0.5) + 0.01 * torch.randn(40, *SHAPE, generator=torch.Generator().manual_seed(3))
    w = model[1].weight.detach().double().numpy()
    logits = model(x).detach()
    y = logits.argmax(1)
    y_c = y % C  # the class eigenspace each example is attacked in (labels and classes differ here)
    margin = (logits.max(1).values - logits.min(1).values).double().numpy()
    dw = np.stack([w[int(c)] - w[1 - int(c)] for c in y.tolist()])
    along = numpy_projection(basis, torch.tensor(dw), y_c)
    if name == "eigen-off-l2":
        along = dw - along
    dist = margin / np.linalg.norm(along, axis=1)
    # a random start needs 200 steps to come back within 0.1% of the boundary: 20 examples of 40
    steps, n = (10, len(x)) if not random_start else (200, 20)
    for factor, fooled in ((1.001, True), (0.999, False)):
        for i in range(n):
            spec = with_overrides(make_spec(name, "synthetic"), eps=float(dist[i] * factor), random_start=random_start,
                                  steps=steps, step_size=float(dist[i] * 0.5))
            # the basis is indexed by y_c: relabel through a model whose classes we know
            x_adv = perturb(_Relabel(model, y[i], y_c[i]), x[i:i + 1], y_c[i:i + 1], spec, basis=basis,
                            generator=torch.Generator().manual_seed(i))
            assert bool(model(x_adv).argmax(1) != y[i]) == fooled, (i, factor, dist[i])


class _Relabel(nn.Module):
    """The two-class model with its logits written into the C-class slots {true, other}: the
    attack's label is the eigenspace's class, the model's decision is unchanged."""

    def __init__(self, model, label, cls):
        super().__init__()
        self.model, self.label, self.cls = model, int(label), int(cls)

    def forward(self, x):
        two = self.model(x)
        out = torch.full((len(x), C), -1e4, dtype=two.dtype)
        out[:, self.cls] = two[:, self.label]
        out[:, (self.cls + 1) % C] = two[:, 1 - self.label]
        return out


def test_box_share_is_what_numpy_measures_and_the_box_bites():
    """On dark images (half the pixels at 0) the clamp removes part of the on-manifold
    perturbation: the reported subspace share and kept norm equal numpy's, and are below 1."""
    basis, model = random_basis(), mlp()
    x, y = batch(40, lo=0.0, hi=0.1)
    x[:, :, :3] = 0.0
    spec = make_spec("eigen", "synthetic")
    res = attack_accuracy(model, Split(x, y), spec, device="cpu", basis=basis, seed=5, batch_size=len(x))
    # the same batch, its generator as attack_accuracy draws it
    record = {}
    x_adv = perturb(model, x, y, spec, basis=basis, generator=batch_generator("cpu", 5, 0), record=record)
    final = (x_adv - x).double().reshape(len(x), -1)
    inside = numpy_projection(basis, final, y)
    want_share = (inside ** 2).sum() / (final.numpy() ** 2).sum()
    want_kept = (final.numpy() ** 2).sum() / (record["unboxed"].double().numpy() ** 2).sum()
    # the code projects in float32, the images' precision
    assert res["subspace_share"] == pytest.approx(want_share, rel=1e-6)
    assert res["box_kept"] == pytest.approx(want_kept, rel=1e-6)
    assert want_share < 0.95 and want_kept < 0.95
