"""Regular (input-space) and generative (latent-space) attacks through ONE loop.

`perturb` runs the same projected-gradient loop for every `AttackSpec`: FGSM is one linf step of
size eps from x0 with no random start; the latent attack runs that loop on z = I_y(x) with no box
and decodes G_y(z'). Two l1 attacks go beyond gradients, because l-inf training masks the l1
gradient on MNIST (see `pointwise.py`): `pointwise`, gradient-free, and `l1-worst`, per sample
the worst case of SLIDE (`l1`) and `pointwise` (run on the samples SLIDE leaves). Every step is
`manifoldadv.ops.pgd_step_` (the fused kernel when built); on the CPU a regular attack on a small
convolutional classifier runs all its steps in the fused engine instead (`fused.py`). Attacks
put the model (and CVAE) in eval mode with frozen parameters and restore both afterwards.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F

from . import eigen, external, fused
from .. import ops
from ..errors import UsageError
from ..runtime import distributed
from .pointwise import pointwise
from .registry import KINDS, AttackSpec

@contextmanager
def frozen(*modules):
    """Eval mode and no parameter gradients for the duration; both restored afterwards."""
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules if m is not None]
    try:
        for m, _, _ in saved:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield
    finally:
        for m, was_training, flags in saved:
            m.train(was_training)
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)


def start(x0, spec: AttackSpec, lo: float, hi: float, gen: torch.Generator | None, shard=None) -> torch.Tensor:
    """Where a restart begins: a random point of the ball ∩ box, or x0 itself."""
    if not spec.random_start:
        return x0.clone()
    shape = x0.shape

    def draw(fn, dims):  # for the global batch when x0 is one process's rows of it
        return distributed.draw(fn, dims, shard, generator=gen, device=x0.device, dtype=x0.dtype)

    if spec.norm == "linf":
        noise = draw(torch.rand, shape) * 2 - 1
        return (x0 + spec.eps * noise).clamp(lo, hi)
    if spec.norm == "l2":
        v = draw(torch.randn, shape)
    else:  # Laplace directions are uniform on the l1 sphere once normalised
        e = draw(torch.rand, shape).clamp_min(1e-12)
        s = draw(torch.rand, shape)
        v = -torch.log(e) * torch.sign(s - 0.5)
    p = 2 if spec.norm == "l2" else 1
    norms = v.flatten(1).norm(p=p, dim=1).clamp_min(1e-12).view(-1, *([1] * (len(shape) - 1)))
    radius = draw(torch.rand, (shape[0],)).view_as(norms)
    x = x0 + v / norms * spec.eps * radius
    # a zero-gradient step is exactly the projection onto ball ∩ box
    return ops.pgd_step_(x, x0, torch.zeros_like(x), step=0.0, eps=spec.eps, norm=spec.norm, lo=lo, hi=hi,
                         l1_quantile=spec.l1_quantile)


def descend(loss_fn, x: torch.Tensor, x0: torch.Tensor, spec: AttackSpec, lo: float, hi: float) -> torch.Tensor:
    """spec.steps projected-gradient steps from x (overwritten) ascending per-sample `loss_fn`."""
    for _ in range(spec.steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x).sum(), x)
        x = x.detach()
        ops.pgd_step_(x, x0, grad, step=spec.step_size, eps=spec.eps, norm=spec.norm, lo=lo, hi=hi,
                      l1_quantile=spec.l1_quantile)
    return x


def maximize(loss_fn, x0: torch.Tensor, spec: AttackSpec, *, lo: float = 0.0, hi: float = 1.0,
             generator: torch.Generator | None = None, fooled=None, shard=None, engine=None) -> torch.Tensor:
    """The one projected-gradient loop: maximise per-sample `loss_fn` around x0 within spec's
    ball ∩ [lo, hi]. With several restarts each sample keeps a restart that fools the model
    (`fooled(x)`, per sample) when one does, else the one of highest final loss: the highest loss
    is not always the misclassified point, and an evaluation counts misclassifications.

    engine: fused.runner's function, which runs the steps from a start and gives the final loss
    and fooled flags itself (the starts are drawn here either way: same generator, same draws)."""
    x0 = x0.detach()
    best, best_loss = None, None
    for _ in range(spec.restarts):
        x = start(x0, spec, lo, hi, generator, shard)
        if engine is not None:
            x, final, wins = engine(x, spec.restarts > 1)
            if spec.restarts == 1:
                return x
        else:
            x = descend(loss_fn, x, x0, spec, lo, hi)
            if spec.restarts == 1:
                return x
            with torch.no_grad():
                final = loss_fn(x)
                wins = fooled(x) if fooled is not None else torch.zeros_like(final, dtype=torch.bool)
        if best is None:
            best, best_loss, best_wins = x, final, wins
        else:
            better = (wins & ~best_wins) | ((wins == best_wins) & (final > best_loss))
            best[better], best_loss[better], best_wins[better] = x[better], final[better], wins[better]
    return best


def cross_entropy(model, y):
    """Per-sample loss of the regular attacks."""
    return lambda inp: F.cross_entropy(model(inp), y, reduction="none")


def perturb(model, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, cvae=None, basis=None,
            generator: torch.Generator | None = None, record: dict | None = None, shard=None) -> torch.Tensor:
    """Adversarial images for (x, y) against `model` under `spec` (in [0, 1]).

    cvae: the generator of the latent attacks; basis: the class eigenbasis of the eigenspace
    attacks (evaluation.eigenbasis).

    shard: (offset, size) when (x, y) are rows of a larger batch spread over processes (the
    random starts are drawn for all `size` rows and sliced, distributed.py); training only.

    record: for a "worst of" composite, gets "first_correct", how many samples its first part
    alone left correctly classified (that attack's own count: one run gives both accuracies);
    for a latent attack, "origin", the reconstructions G_y(I_y(x)) the perturbation starts from;
    for an eigenspace attack, what the box did (eigen.search)."""
    k = spec.kind
    if k.identity:
        return x
    with frozen(model, cvae):
        if k.parts:
            return _worst_of(model, x, y, spec, cvae=cvae, basis=basis, generator=generator, record=record)
        if k.external:
            return external.run(model, x, y, spec.name, spec.norm, spec.eps, generator=generator)
        if k.gradient_free:
            return pointwise(model, x, y, eps=spec.eps, generator=generator, restarts=spec.restarts)[0]
        if k.subspace:
            return eigen.search(model, x, y, spec, basis, maximize=maximize, generator=generator, shard=shard,
                                record=record)
        if k.space == "input":
            return maximize(cross_entropy(model, y), x, spec, lo=0.0, hi=1.0, generator=generator,
                            fooled=lambda inp: model(inp).argmax(1) != y, shard=shard,
                            engine=fused.runner(model, x, y, spec, 0.0, 1.0))
        z0, z = latent_search(model, cvae, x, y, spec, generator=generator, shard=shard)
        with torch.no_grad():
            if record is not None:
                record["origin"] = cvae.decode_mean(z0, y)
            return cvae.decode_mean(z, y)


def _part(spec: AttackSpec, name: str) -> AttackSpec:
    """A composite's part: the composite's own budget and schedule for an attack of its norm;
    a gradient-free part keeps its own restarts."""
    k = KINDS[name]
    if k.gradient_free:
        return AttackSpec(name, k.norm, spec.eps, 0, 0.0, False, k.restarts, spec.l1_quantile)
    return replace(spec, name=name)


def _worst_of(model, x, y, spec: AttackSpec, *, cvae, basis, generator, record):
    if spec.parts:
        return _worst_of_all(model, x, y, spec.parts, cvae=cvae, basis=basis, generator=generator)
    parts = [_part(spec, name) for name in spec.kind.parts]
    x_adv = perturb(model, x, y, parts[0], cvae=cvae, basis=basis, generator=generator)
    for i, part in enumerate(parts[1:]):
        with torch.no_grad():
            left = (model(x_adv).argmax(1) == y).nonzero().squeeze(1)
        if i == 0 and record is not None:
            record["first_correct"] = len(left)
        if not len(left):
            break
        # the generator goes back to where the first part left it, so that the next batch's first
        # part is exactly that attack run alone and the composite fools a superset of it
        state = generator.get_state() if generator is not None else None
        x_part = perturb(model, x[left], y[left], part, cvae=cvae, basis=basis, generator=generator)
        if state is not None:
            generator.set_state(state)
        with torch.no_grad():
            fooled = model(x_part).argmax(1) != y[left]
        x_adv[left[fooled]] = x_part[fooled]
    return x_adv


def _worst_of_all(model, x, y, parts, *, cvae, basis, generator):
    """worst:A,B,...: every part runs on the whole batch from the batch's generator as it is (a
    copy each), so each part does exactly what it does alone and the worst case is exactly the
    union of their successes."""
    gens = [_clone(generator) for _ in parts]
    x_adv = x.clone()
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for part, gen in zip(parts, gens):
        x_part = perturb(model, x, y, part, cvae=cvae, basis=basis, generator=gen)
        with torch.no_grad():
            fooled = (model(x_part).argmax(1) != y) & robust
        x_adv[fooled], robust = x_part[fooled], robust & ~fooled
    return x_adv


def _clone(generator: torch.Generator | None) -> torch.Generator | None:
    return None if generator is None else torch.Generator(device=generator.device).set_state(generator.get_state())


def latent_search(model, cvae, x, y, spec: AttackSpec, *, generator=None, shard=None):
    """(z0, z'): the encoding I_y(x) and the latent point the attack moves it to (no box)."""
    if cvae is None:
        raise UsageError(f"attack {spec.name} needs a CVAE (--cvae CVAE.safetensors)")
    with frozen(model, cvae):
        with torch.no_grad():
            z0 = cvae.encode_mean(x, y)
        loss = lambda z: F.cross_entropy(model(cvae.decode_mean(z, y)), y, reduction="none")  # noqa: E731
        fooled = lambda z: model(cvae.decode_mean(z, y)).argmax(1) != y  # noqa: E731
        return z0, maximize(loss, z0, spec, lo=-math.inf, hi=math.inf, generator=generator, fooled=fooled,
                            shard=shard)


def reconstruct(cvae, x, y) -> torch.Tensor:
    """G_y(I_y(x)): the clean reconstruction the latent attack starts from."""
    with frozen(cvae), torch.no_grad():
        return cvae.decode_mean(cvae.encode_mean(x, y), y)


