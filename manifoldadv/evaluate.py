"""Accuracy of a classifier on a split, clean or under an attack."""

from __future__ import annotations

import torch

from . import console
from .attacks import AttackSpec, frozen, perturb, reconstruct


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def clean_accuracy(model, split, *, device, batch_size: int = 1000) -> float:
    correct = 0
    with frozen(model), torch.no_grad():
        for sl in batches(len(split), batch_size):
            x, y = split.images(sl).to(device), split.y[sl].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(split), 1)


def attack_accuracy(model, split, spec: AttackSpec, *, device, batch_size: int = 500, cvae=None,
                    seed: int = 0, label: str = "") -> dict:
    """Accuracy under `spec`; latent attacks also report accuracy on the clean reconstructions
    G_y(I_y(x)), which separates the attack's effect from reconstruction error; `l1-worst` also
    reports SLIDE's accuracy alone (`slide_accuracy`, equal to the `l1` attack's)."""
    gen = make_generator(device, seed)
    correct = recon_correct = slide_correct = 0
    record = {}
    n = len(split)
    with console.progress() as bar:
        task = bar.add_task(f"{label or spec.name}", total=n, status="")
        for sl in batches(n, batch_size):
            x, y = split.images(sl).to(device), split.y[sl].to(device)
            x_adv = perturb(model, x, y, spec, cvae=cvae, generator=gen, record=record)
            slide_correct += record.pop("slide_correct", 0)
            with frozen(model), torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y).sum())
                if spec.space == "latent":
                    recon_correct += int((model(reconstruct(cvae, x, y)).argmax(1) == y).sum())
            bar.update(task, advance=sl.stop - sl.start, status=f"acc {correct / (sl.stop):.2%}")
    out = {"accuracy": correct / max(n, 1), "n": n}
    if spec.space == "latent":
        out["recon_accuracy"] = recon_correct / max(n, 1)
    if spec.name == "l1-worst":
        out["slide_accuracy"] = slide_correct / max(n, 1)
    return out
