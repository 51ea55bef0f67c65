"""Per-class covariance eigen-spectra of the clean test set and of robust test sets.

A robust test set D^r is the test set attacked against a model (the paper's Figure 2: PGD
against the PGD-adv model, the latent attack against the VAE-adv model). Each class's
covariance is accumulated in a stream through `ops.ClassCovariance` (float64 state) and
eigen-decomposed in float64.

Summary numbers make the paper's claim measurable: for every class and robust set, the ratio
robust/clean of matching eigenvalues (both sorted descending), averaged over the top 30 and over
the tail (the remaining d - 30). Eigenvalues are floored at `floor_rel * lambda_max(clean class)`
before dividing, so zero (or rounding-noise) eigenvalues of data that lie exactly on a manifold
don't divide by zero; the average is geometric (the mean of log-ratios), because the tail
spans many decades.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import ops
from .attacks import AttackSpec, perturb
from .evaluate import batches, make_generator

TOP = 30
DEFAULT_FLOOR_REL = 1e-6


@dataclass
class SetSpectrum:
    name: str
    checkpoint: str | None
    attack: str
    counts: np.ndarray  # [C]
    eigenvalues: dict[int, np.ndarray]  # class -> descending float64 eigenvalues


def class_spectra(counts, covs, classes) -> dict[int, np.ndarray]:
    out = {}
    for c in classes:
        if int(counts[c]) < 2:
            continue
        ev = np.linalg.eigvalsh(covs[c].cpu().numpy().astype(np.float64))[::-1].copy()
        out[int(c)] = ev
    return out


def accumulate(split, classes, *, device, batch_size=500, model=None, spec: AttackSpec | None = None, cvae=None,
               seed: int = 0, progress=None, task=None):
    """Stream (optionally attacked) test images of the chosen classes into per-class covariances."""
    dim = int(np.prod(split.x.shape[1:]))
    num_classes = int(split.y.max()) + 1 if len(split) else 1
    acc = ops.ClassCovariance(num_classes, dim, device=device)
    wanted = torch.zeros(num_classes, dtype=torch.bool)
    wanted[list(classes)] = True
    keep = wanted[split.y].nonzero().flatten()
    gen = make_generator(device, seed)
    for sl in batches(len(keep), batch_size):
        idx = keep[sl]
        x, y = split.images(idx).to(device), split.y[idx].to(device)
        if model is not None and spec is not None and spec.name != "clean":
            x = perturb(model, x, y, spec, cvae=cvae, generator=gen)
        acc.update(x.flatten(1).float(), y)
        if progress is not None:
            progress.update(task, advance=len(idx))
    return acc.finalize()


def summarize(clean: SetSpectrum, robust: SetSpectrum, floor_rel: float = DEFAULT_FLOOR_REL, top: int = TOP):
    rows = []
    for c, ev_c in clean.eigenvalues.items():
        if c not in robust.eigenvalues:
            continue
        ev_r = robust.eigenvalues[c]
        floor = floor_rel * max(float(ev_c[0]), np.finfo(float).tiny)
        ratio = np.maximum(ev_r, floor) / np.maximum(ev_c, floor)
        k = min(top, len(ratio))
        top_ratio = float(np.exp(np.mean(np.log(ratio[:k]))))
        tail_ratio = float(np.exp(np.mean(np.log(ratio[k:])))) if len(ratio) > k else float("nan")
        rows.append({"set": robust.name, "class": c, "top_ratio": top_ratio, "tail_ratio": tail_ratio,
                     "floor": floor})
    return rows


def plot(path, sets: list[SetSpectrum], classes, *, top: int = TOP, title: str = "") -> list[str]:
    """Figure 2 of the paper: per class a row of three panels (all, top `top`, the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import atomic_write_bytes

    classes = [c for c in classes if all(c in s.eigenvalues for s in sets)]
    fig, axes = plt.subplots(len(classes), 3, figsize=(13, 3.2 * len(classes)), squeeze=False)
    for row, c in enumerate(classes):
        for s in sets:
            ev = s.eigenvalues[c]
            pos = np.maximum(ev, np.finfo(float).tiny)
            idx = np.arange(1, len(ev) + 1)
            axes[row, 0].semilogy(idx, pos, label=s.name, lw=1.2)
            axes[row, 1].plot(idx[:top], ev[:top], label=s.name, lw=1.2, marker=".", ms=3)
            axes[row, 2].semilogy(idx[top:], pos[top:], label=s.name, lw=1.2)
        axes[row, 0].set_title(f"class {c}: all {len(idx)} eigenvalues")
        axes[row, 1].set_title(f"class {c}: largest {top}")
        axes[row, 2].set_title(f"class {c}: smallest {len(idx) - top}")
        for ax in axes[row]:
            ax.set_xlabel("index (descending)")
            ax.grid(alpha=0.3)
        axes[row, 0].set_ylabel("eigenvalue")
        axes[row, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    titles = [ax.get_title() for ax in axes.flat]
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return titles
