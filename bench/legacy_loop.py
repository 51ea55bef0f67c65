"""The training loop as it was before batches moved to the device (kept for `make bench` and
`make gpu-check`, which time it beside `manifoldadv.training.train_epoch`): each batch gathered
in host memory and copied over, CIFAR augmentation as a Python loop over the images, and the
loss and accuracy read back (a device synchronisation) after every batch. The objective (the
attacks and the loss) is the current one: only the loop around it is the old one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from manifoldadv.evaluation import make_generator
from manifoldadv.training import epoch_seed


def augment(x, gen):
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (b,), generator=gen).tolist()
    dy = torch.randint(0, 9, (b,), generator=gen).tolist()
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), out.flip(3), out)


def legacy_epoch(model, opt, objective, split, cfg, epoch, device, *, max_batches=None):
    """One epoch (of a classifier objective) the old way; (mean loss, training accuracy)."""
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    attack_gen = make_generator(device, epoch_seed(cfg.seed, epoch) + 1)
    n = len(split)
    perm = torch.randperm(n, generator=gen)
    stop = n if max_batches is None else min(n, max_batches * cfg.batch_size)
    model.train()
    tot_loss = tot_correct = seen = 0.0
    for start in range(0, stop, cfg.batch_size):
        sl = slice(start, min(start + cfg.batch_size, stop))
        idx = perm[sl]
        x, y = split.images(idx), split.y[idx]
        if cfg.augment:
            x = augment(x, gen)
        x, y = x.to(device), y.to(device)
        value, correct = objective.loss(model, x, y, epoch, attack_gen, progress=sl.stop / n)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        b = y.shape[0]
        seen += b
        tot_loss += float(value.detach()) * b
        tot_correct += float(correct)
    return tot_loss / seen, tot_correct / seen
