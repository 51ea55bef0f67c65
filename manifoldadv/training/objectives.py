"""What one training step minimises, per kind of model, and how it is measured on the test set.

`loss(net, outer, x, y, epoch, gen, progress, shard)`: `net` is the bare model (the attacks run
on it, in eval mode, taking gradients with respect to the input alone), `outer` the module the
training forward goes through (DistributedDataParallel with several processes, else `net`).
`shard` = (offset, size) when (x, y) are this process's rows of a global batch of `size`: every
random draw is made for the whole batch and sliced, and the loss is scaled so that the average
of the processes' gradients is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks import AttackSpec, perturb, with_overrides
from ..data import Split, loader
from ..evaluation import batch_generator, clean_accuracy
from ..runtime import distributed


def mean(per_sample: torch.Tensor, shard) -> torch.Tensor:
    """The batch mean one process computes; a process's share of it with several."""
    if shard is None:
        return per_sample.mean()
    return per_sample.sum() * (distributed.world() / shard[1])


class ClassifierObjective:
    kind = "classifier"

    def __init__(self, cfg, cvae=None, graphs=None, basis=None):
        """graphs: a graphed.AttackGraphs replaying the attacks it can (None: all eager); cvae and
        basis: what the latent and eigenspace attacks need."""
        self.cfg, self.specs, self.cvae, self.graphs, self.basis = cfg, cfg.specs(), cvae, graphs, basis

    def warm(self, spec: AttackSpec, epoch: float) -> AttackSpec:
        """`spec` with eps and step scaled by the warm-up ramp at (fractional) `epoch`."""
        w = self.cfg.eps_warmup
        if w <= 0 or not spec.kind.regular:
            return spec
        scale = min(1.0, max(epoch - self.cfg.adv_start, 0.0) / w)
        return with_overrides(spec, eps=spec.eps * scale, step_size=spec.step_size * scale)

    def loss(self, net, x, y, epoch, gen, progress: float = 1.0, *, outer=None, shard=None):
        """(loss, correct): `correct` counts right predictions on the training examples (averaged
        over the attacks), a device tensor, so that the loop need not wait for the device."""
        outer = net if outer is None else outer
        if not self.specs or epoch < self.cfg.adv_start:
            logits = outer(x)
            return mean(F.cross_entropy(logits, y, reduction="none"), shard), (logits.argmax(1) == y).sum()
        losses, correct = [], 0
        for spec in self.specs:
            spec = self.warm(spec, epoch + progress)
            x_adv = self.graphs.run(x, y, spec, generator=gen, shard=shard) if self.graphs is not None else None
            if x_adv is None:
                x_adv = perturb(net, x, y, spec, cvae=self.cvae, basis=self.basis, generator=gen, shard=shard)
            logits = outer(x_adv)
            losses.append(F.cross_entropy(logits, y, reduction="none"))
            correct = correct + (logits.argmax(1) == y).sum()
        loss = mean(self.cfg.kind.combine(losses, self.cfg.strategy), shard)
        w = self.cfg.clean_weight
        if w > 0:
            loss = (1 - w) * loss + w * mean(F.cross_entropy(outer(x), y, reduction="none"), shard)
        return loss, correct.double() / len(self.specs)

    def evaluate(self, model, test: Split, device) -> dict:
        return {"clean_accuracy": clean_accuracy(model, test, device=device)}


class Elbo(torch.nn.Module):
    """The CVAE's per-sample -ELBO as a forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, cvae):
        super().__init__()
        self.cvae = cvae

    def forward(self, x, y, noise):
        return self.cvae.negative_elbo(x, y, noise=noise, objective=True)[0]


class CVAEObjective:
    kind = "cvae"

    def loss(self, net, x, y, epoch, gen, progress: float = 1.0, *, outer=None, shard=None):
        noise = distributed.draw(torch.randn, (len(x), net.latent), shard, generator=gen, device=x.device)
        loss = (outer if outer is not None else Elbo(net))(x, y, noise)
        return mean(loss, shard), None

    def evaluate(self, model, test: Split, device) -> dict:
        return cvae_test_metrics(model, test, device)


def cvae_test_metrics(model, test: Split, device, batch_size: int = 1000, seed: int = 0) -> dict:
    """Test -ELBO (nats per image) and mean-reconstruction squared error per pixel."""
    was = model.training
    model.eval()
    tot = torch.zeros(2, dtype=torch.float64, device=device)
    z1 = torch.zeros(model.latent, dtype=torch.float64, device=device)
    z2 = torch.zeros_like(z1)
    n = len(test)
    with torch.no_grad():
        for k, x, y in loader.dealt(loader.place(test, device), batch_size, device):
            nelbo, _ = model.negative_elbo(x, y, generator=batch_generator(device, seed, k))
            mu = model.encode_mean(x, y)
            rec = model.decode_mean(mu, y)
            tot += torch.stack([nelbo.sum().double(), (rec - x).pow(2).sum().double()])
            z1 += mu.double().sum(0)
            z2 += mu.double().pow(2).sum(0)
    model.train(was)
    for t in (tot, z1, z2):
        distributed.all_reduce_(t)
    dim = test.x[0].numel()
    return {"test_nelbo": float(tot[0]) / n, "test_recon_mse": float(tot[1]) / (n * dim),
            "active_units": active_units(z1, z2, n)}


ACTIVE_VARIANCE = 0.01  # Burda et al. 2016: a unit whose posterior mean varies less is inactive


def active_units(sum_mu: torch.Tensor, sum_mu2: torch.Tensor, n: int) -> int:
    """How many latent dimensions' posterior means vary across inputs by more than 0.01 (variance)."""
    var = sum_mu2 / n - (sum_mu / n).pow(2)
    return int((var > ACTIVE_VARIANCE).sum())
