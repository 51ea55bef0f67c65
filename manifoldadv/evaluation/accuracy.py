"""Accuracy of a classifier on a split, clean or under an attack."""

from __future__ import annotations

import torch

from ..runtime import console, distributed
from ..data import loader
from ..attacks import AttackSpec, frozen, perturb
from ..runtime import derive_seed


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def batch_generator(device, seed: int, index: int) -> torch.Generator:
    """The generator of evaluation batch `index`: seeded by (seed, index), so that a batch draws
    the same numbers whichever process evaluates it and however many there are."""
    return make_generator(device, derive_seed(seed, index, 29))


def clean_accuracy(model, split, *, device, batch_size: int = 1000) -> float:
    split = loader.place(split, device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with frozen(model), torch.no_grad():
        for _, x, y in loader.dealt(split, batch_size, device):
            correct += (model(x).argmax(1) == y).sum()
    return int(distributed.all_reduce_(correct)) / max(len(split), 1)


def attack_accuracy(model, split, spec: AttackSpec, *, device, batch_size: int = 500, cvae=None, basis=None,
                    seed: int = 0, label: str = "") -> dict:
    """Accuracy under `spec`; latent attacks also report accuracy on the clean reconstructions
    G_y(I_y(x)), which separates the attack's effect from reconstruction error; a "worst of"
    composite also reports its first part's accuracy alone (`l1-worst`: `slide_accuracy`, equal
    to the `l1` attack's); an eigenspace attack reports what the box did: `subspace_share`, the
    share of the final perturbations' squared norm in the intended subspace, and `box_kept`, their
    squared norm over that of the perturbations before the box (sums over the split). With
    several processes each takes whole batches and the counts add up."""
    split = loader.place(split, device)
    # counts stay on the device; the progress bar reads them at most every StatusClock period
    counts = torch.zeros(3, dtype=torch.int64, device=device)  # correct, on reconstructions, first part
    saw_origin = torch.zeros((), dtype=torch.int64, device=device)
    norms = torch.zeros(3, dtype=torch.float64, device=device)  # eigenspace attacks: final, in subspace, unboxed
    n = len(split)
    with console.progress() as bar:
        task = bar.add_task(f"{label or spec.name}", total=n, status="")
        clock = console.StatusClock(bar)
        done = 0
        for k, x, y in loader.dealt(split, batch_size, device):
            record = {}
            done += y.shape[0]
            x_adv = perturb(model, x, y, spec, cvae=cvae, basis=basis, generator=batch_generator(device, seed, k),
                            record=record)
            if "total_sq" in record:
                norms += torch.stack([record["total_sq"], record["subspace_sq"], record["unboxed_sq"]])
            origin = record.get("origin")  # a latent attack's G_y(I_y(x))
            with frozen(model), torch.no_grad():
                counts[0] += (model(x_adv).argmax(1) == y).sum()
                if origin is not None:
                    saw_origin += 1
                    counts[1] += (model(origin).argmax(1) == y).sum()
            counts[2] += record.get("first_correct", 0)
            bar.update(task, advance=y.shape[0])
            if clock.due():
                bar.update(task, status=f"acc {int(counts[0]) / done:.2%}")
    distributed.all_reduce_(counts)
    out = {"accuracy": int(counts[0]) / max(n, 1), "n": n}
    if int(distributed.all_reduce_(saw_origin)):  # a latent attack (not a composite holding one)
        out["recon_accuracy"] = int(counts[1]) / max(n, 1)
    if spec.kind.subspace in ("on", "off") and not spec.kind.parts:
        total, inside, unboxed = distributed.all_reduce_(norms).tolist()
        out["subspace_share"] = inside / total if total > 0 else 1.0
        out["box_kept"] = total / unboxed if unboxed > 0 else 1.0
    if spec.kind.first_reported_as:
        out[spec.kind.first_reported_as] = int(counts[2]) / max(n, 1)
    return out
