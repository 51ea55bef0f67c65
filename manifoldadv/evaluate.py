"""Accuracy of a classifier on a split, clean or under an attack."""

from __future__ import annotations

import torch

from . import console, loader
from .attacks import AttackSpec, frozen, perturb


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def clean_accuracy(model, split, *, device, batch_size: int = 1000) -> float:
    split = loader.place(split, device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with frozen(model), torch.no_grad():
        for x, y, _ in loader.batches(split, batch_size, device):
            correct += (model(x).argmax(1) == y).sum()
    return int(correct) / max(len(split), 1)


def attack_accuracy(model, split, spec: AttackSpec, *, device, batch_size: int = 500, cvae=None,
                    seed: int = 0, label: str = "") -> dict:
    """Accuracy under `spec`; latent attacks also report accuracy on the clean reconstructions
    G_y(I_y(x)), which separates the attack's effect from reconstruction error; a "worst of"
    composite also reports its first part's accuracy alone (`l1-worst`: `slide_accuracy`, equal
    to the `l1` attack's)."""
    gen = make_generator(device, seed)
    split = loader.place(split, device)
    # counts stay on the device; the progress bar reads them at most every StatusClock period
    correct = torch.zeros((), dtype=torch.int64, device=device)
    recon_correct = torch.zeros((), dtype=torch.int64, device=device)
    first_correct, saw_origin = 0, False
    record = {}
    n = len(split)
    with console.progress() as bar:
        task = bar.add_task(f"{label or spec.name}", total=n, status="")
        clock = console.StatusClock(bar)
        for x, y, done in loader.batches(split, batch_size, device):
            x_adv = perturb(model, x, y, spec, cvae=cvae, generator=gen, record=record)
            first_correct += record.pop("first_correct", 0)
            origin = record.pop("origin", None)  # a latent attack's G_y(I_y(x))
            with frozen(model), torch.no_grad():
                correct += (model(x_adv).argmax(1) == y).sum()
                if origin is not None:
                    saw_origin = True
                    recon_correct += (model(origin).argmax(1) == y).sum()
            bar.update(task, advance=y.shape[0])
            if clock.due():
                bar.update(task, status=f"acc {int(correct) / done:.2%}")
    out = {"accuracy": int(correct) / max(n, 1), "n": n}
    if saw_origin:  # a latent attack (not a composite holding one)
        out["recon_accuracy"] = int(recon_correct) / max(n, 1)
    if spec.kind.first_reported_as:
        out[spec.kind.first_reported_as] = first_correct / max(n, 1)
    return out
