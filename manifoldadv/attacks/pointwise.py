"""The Pointwise attack (Schott et al., 2019): gradient-free, decision-based, small l0 and l1.

Why it is here: l-inf adversarial training on MNIST teaches the first layer to threshold pixels,
which masks the gradient that l1 PGD (SLIDE) follows, so SLIDE alone overstates l1 robustness
(Tramer & Boneh, 2019, evaluate l1 with the worst case of SLIDE and gradient-free attacks like
this one). It needs only the predicted label:
1. salt-and-pepper noise of rising density until the label is wrong;
2. reset changed pixels to their clean value, in a random order, in groups of 64, 16 and 4 and
   then one at a time, keeping every reset after which the label stays wrong, until a whole
   one-pixel pass keeps none: the result is 1-minimal (no single changed pixel can go back);
3. for each pixel still changed, bisect between its clean and its current value for the smallest
   change that keeps the label wrong (skipped for examples still over `give_up` * eps away).
Every step is batched over samples; each sample only pays for its own changed pixels.
"""

from __future__ import annotations

import torch

VERSION = 3  # part of the evaluation cache key: bump when the algorithm's results change


def _rand(shape, like: torch.Tensor, generator):
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


@torch.no_grad()
def pointwise(model, x0: torch.Tensor, y: torch.Tensor, *, eps: float, lo: float = 0.0, hi: float = 1.0,
              generator: torch.Generator | None = None, restarts: int = 1, give_up: float = 3.0,
              **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, fooled): per sample, the attack's point if it is misclassified and within ||x - x0||_1
    <= eps (then fooled is True), else x0 itself. Restarts (other noise, other orders) run on the
    samples not fooled yet whose first attempt came within `give_up` * eps (an accuracy
    attack, not a distance minimiser; on the MNIST models a factor of 3 lost no sample to 5
    unconditional restarts and skipped most of the hopeless ones). The model must already be in
    eval mode."""
    x = x0.detach().clone()
    fooled = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
    retry = torch.ones_like(fooled)
    for attempt in range(restarts):
        rows = (~fooled & retry).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        xr, fr, dist = _once(model, x0[rows], y[rows], eps=eps, lo=lo, hi=hi, generator=generator,
                             give_up=give_up, **kw)
        x[rows[fr]], fooled[rows[fr]] = xr[fr], True
        if attempt == 0:
            retry[rows] = dist <= give_up * eps
    return x, fooled


def _once(model, x0, y, *, eps, lo, hi, generator, densities: int = 100, passes: int = 10,
          bisect_steps: int = 10, refine_passes: int = 2, give_up: float, batch_size: int = 1024):
    n, shape = x0.shape[0], x0.shape[1:]
    clean = x0.detach().reshape(n, -1)
    d = clean.shape[1]

    def wrong(rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(rows), dtype=torch.bool, device=x0.device)
        for s in range(0, len(rows), batch_size):
            sl = slice(s, s + batch_size)
            out[sl] = model(cand[sl].view(-1, *shape)).argmax(1) != y[rows[sl]]
        return out

    everyone = torch.arange(n, device=x0.device)
    x = clean.clone()
    found = wrong(everyone, x)  # misclassified already: distance 0
    for k in range(1, densities + 1):
        rows = (~found).nonzero().squeeze(1)
        if len(rows) == 0:
            break
        p = k / densities
        u = _rand((len(rows), d), clean, generator)
        cand = clean[rows].clone()
        cand[u < p / 2] = lo
        cand[u > 1 - p / 2] = hi
        ok = wrong(rows, cand)
        x[rows[ok]] = cand[ok]
        found[rows[ok]] = True

    def sweep(active: torch.Tensor, group: int = 1):
        """(rows, cols [rows, group]) for step j over each active sample's changed pixels, in a
        random order, `group` at a time (a group's tail may hold unchanged pixels: resetting those
        is a no-op)."""
        diff = (x != clean) & active[:, None]
        keys = _rand((n, d), clean, generator)
        keys[~diff] = 2.0  # unchanged pixels sort last
        order = keys.argsort(dim=1)
        counts = diff.sum(1)
        for j in range(0, int(counts.max()) if n else 0, group):
            rows = (counts > j).nonzero().squeeze(1)
            yield rows, order[rows, j:j + group]

    def reset_pass(active: torch.Tensor, group: int) -> torch.Tensor:
        changed = torch.zeros(n, dtype=torch.bool, device=x0.device)
        for rows, cols in sweep(active, group):
            cand = x[rows].clone()
            r = torch.arange(len(rows), device=x0.device)[:, None]
            cand[r, cols] = clean[rows[:, None], cols]
            ok = wrong(rows, cand)
            x[rows[ok]] = cand[ok]
            changed[rows[ok]] = True
        return changed

    # coarse to fine: noise that overshot by far loses most of its pixels in groups, so the
    # one-pixel passes that make the result 1-minimal only visit what is left
    for group in (64, 16, 4):
        reset_pass(found, group)
    active = found.clone()
    for _ in range(passes):
        active = reset_pass(active, 1)
        if not active.any():
            break

    # the bisection below only shrinks changes, rarely by much: far-off examples skip it
    hopeful = found & ((x - clean).abs().sum(1) <= give_up * eps)
    for _ in range(refine_passes):
        for rows, cols in sweep(hopeful):
            cols = cols[:, 0]
            start, end = clean[rows, cols], x[rows, cols]
            t_lo = torch.zeros(len(rows), device=x0.device)
            t_hi = torch.ones(len(rows), device=x0.device)  # t = 1 (the current value) is adversarial
            for _ in range(bisect_steps):
                mid = (t_lo + t_hi) / 2
                cand = x[rows].clone()
                cand[torch.arange(len(rows), device=x0.device), cols] = start + mid * (end - start)
                ok = wrong(rows, cand)
                t_hi = torch.where(ok, mid, t_hi)
                t_lo = torch.where(ok, t_lo, mid)
            x[rows, cols] = start + t_hi * (end - start)

    adversarial = found & wrong(everyone, x)
    dist = torch.where(adversarial, (x - clean).abs().sum(1), torch.full_like(clean[:, 0], torch.inf))
    fooled = dist <= eps * (1 + 1e-6)
    x = torch.where(fooled[:, None], x, clean)
    return x.view(n, *shape), fooled, dist
