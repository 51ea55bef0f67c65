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

A latent-attack set can also be compared with the CVAE's reconstructions G_y(I_y(x)), the
points the attack starts from. Lemma 1 of the paper writes a latent adversarial example as
x0 + W dz with x0 drawn from D', the encode-decode image of D: robust/clean is then the
change of distribution D -> D' times the perturbation's effect, and robust/reconstruction
is the perturbation's effect alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pathlib import Path

from ..runtime import accel, console, distributed
from .. import checkpoint, ops
from ..data import loader
from ..attacks import needs, perturb, reconstruct, spec_for
from ..config import latent_eps
from ..errors import UsageError
from .accuracy import batch_generator

TOP = 30
DEFAULT_FLOOR_REL = 1e-6


@dataclass
class SetSpectrum:
    name: str
    checkpoint: str | None
    attack: str
    counts: np.ndarray  # [C]
    eigenvalues: dict[int, np.ndarray]  # class -> descending float64 eigenvalues
    baseline: str | None = None  # the set it is also compared with (a latent set: its reconstructions)
    top_energy: dict[int, float] | None = None  # class -> share of the perturbation in the clean top directions


def class_spectra(counts, covs, classes) -> dict[int, np.ndarray]:
    out = {}
    for c in classes:
        if int(counts[c]) < 2:
            continue
        ev = np.linalg.eigvalsh(covs[c].cpu().numpy().astype(np.float64))[::-1].copy()
        out[int(c)] = ev
    return out


class PerturbationEnergy:
    """Per class, the share of the perturbations' squared norm that lies in a fixed subspace (the
    clean class's top eigen-directions): sum ||V_c^T d||^2 / sum ||d||^2, accumulated in float64."""

    def __init__(self, directions: dict[int, torch.Tensor]):  # class -> [dim, k], orthonormal columns
        self.directions = directions
        # sums stay on the directions' device until `fractions` (no round trip per batch)
        self.inside = {c: v.new_zeros(()) for c, v in directions.items()}
        self.total = {c: v.new_zeros(()) for c, v in directions.items()}
        self.reduced = False

    def update(self, delta: torch.Tensor, y: torch.Tensor) -> None:
        delta = delta.flatten(1).double()
        for c, v in self.directions.items():
            mine = (y == c).to(delta.dtype).unsqueeze(1)  # a mask, not an index: no sync on the count
            d = delta * mine
            self.inside[c] += (d @ v).square().sum()
            self.total[c] += d.square().sum()

    def fractions(self) -> dict[int, float]:
        if not self.reduced and self.directions:  # the processes' sums added up, once
            sums = distributed.all_reduce_(torch.stack([*self.inside.values(), *self.total.values()]))
            k = len(self.inside)
            self.inside, self.total = dict(zip(self.inside, sums[:k])), dict(zip(self.total, sums[k:]))
            self.reduced = True
        total = {c: float(t) for c, t in self.total.items()}
        return {c: float(self.inside[c]) / t if t > 0 else float("nan") for c, t in total.items()}


def top_directions(covs, classes, k: int) -> dict[int, torch.Tensor]:
    """The k leading eigenvectors of each class's covariance (float64, on the covariances' device)."""
    import scipy.linalg

    out = {}
    for c in classes:
        cov = covs[c].cpu().numpy().astype(np.float64)
        d = cov.shape[0]
        _, vecs = scipy.linalg.eigh(cov, subset_by_index=[d - min(k, d), d - 1])
        out[int(c)] = torch.from_numpy(np.ascontiguousarray(vecs)).to(covs.device)
    return out


def accumulate(split, classes, *, device, batch_size=500, transform=None, energy: PerturbationEnergy | None = None,
               seed: int = 0, progress=None, task=None):
    """Stream the test images of the chosen classes into per-class covariances.

    transform(x, y, generator) -> (images, origin) replaces each batch first (an attack, a
    reconstruction); `energy` then measures the perturbations images - origin (origin None: none)."""
    dim = int(np.prod(split.x.shape[1:]))
    num_classes = int(split.y.max()) + 1 if len(split) else 1
    acc = ops.ClassCovariance(num_classes, dim, device=device)
    wanted = torch.zeros(num_classes, dtype=torch.bool)
    wanted[list(classes)] = True
    keep = wanted[split.y.cpu()].nonzero().flatten()
    placed = loader.place(split, device)
    # several processes take whole batches each (with the batch's own generator) and merge
    for k, x, y in loader.dealt(placed, batch_size, device, order=keep):
        if transform is not None:
            x, origin = transform(x, y, batch_generator(device, seed, k))
            if energy is not None and origin is not None:
                energy.update(x - origin, y)
        acc.update(x.flatten(1).float(), y)
        if progress is not None:
            progress.update(task, advance=y.shape[0])
    return acc.all_reduce().finalize()


def attacked(model, spec, cvae=None, basis=None):
    """The transform for `accumulate` that attacks each batch against `model`. The perturbation is
    measured from x, or for a latent attack from G_y(I_y(x)) (Lemma 1's x0: the W dz part alone)."""
    def transform(x, y, gen):
        record = {}
        x_adv = perturb(model, x, y, spec, cvae=cvae, basis=basis, generator=gen, record=record)
        return x_adv, record.get("origin", x)
    return transform


def reconstructed(cvae):
    """The transform for `accumulate` that replaces each batch by G_y(I_y(x))."""
    return lambda x, y, gen: (reconstruct(cvae, x, y), None)


def summarize(reference: SetSpectrum, robust: SetSpectrum, floor_rel: float = DEFAULT_FLOOR_REL, top: int = TOP):
    rows = []
    for c, ev_c in reference.eigenvalues.items():
        if c not in robust.eigenvalues:
            continue
        ev_r = robust.eigenvalues[c]
        floor = floor_rel * max(float(ev_c[0]), np.finfo(float).tiny)
        ratio = np.maximum(ev_r, floor) / np.maximum(ev_c, floor)
        k = min(top, len(ratio))
        top_ratio = float(np.exp(np.mean(np.log(ratio[:k]))))
        tail_ratio = float(np.exp(np.mean(np.log(ratio[k:])))) if len(ratio) > k else float("nan")
        rows.append({"set": robust.name, "reference": reference.name, "class": c, "top_ratio": top_ratio,
                     "tail_ratio": tail_ratio, "floor": floor})
    return rows


def summarize_all(sets: list[SetSpectrum], floor_rel: float = DEFAULT_FLOOR_REL, top: int = TOP) -> list[dict]:
    """Every set against the clean one (sets[0]), with its perturbations' top share where it has one;
    then every set that has a baseline against that baseline."""
    by_name = {s.name: s for s in sets}
    rows = [row for s in sets[1:] for row in summarize(sets[0], s, floor_rel, top)]
    for row in rows:
        energy = by_name[row["set"]].top_energy
        if energy is not None:
            row["top_energy"] = energy[row["class"]]
    return rows + [row for s in sets[1:] if s.baseline for row in summarize(by_name[s.baseline], s, floor_rel, top)]


def plot(path, sets: list[SetSpectrum], classes, *, top: int = TOP, title: str = "") -> list[str]:
    """Figure 2 of the paper: per class a row of three panels (all, top `top`, the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..runtime.outputs import save_figure

    classes = [c for c in classes if all(c in s.eigenvalues for s in sets)]
    fig, axes = plt.subplots(len(classes), 3, figsize=(13, 3.2 * len(classes)), squeeze=False)
    for row, c in enumerate(classes):
        # log panels: exact zeros and rounding noise sit at float64 resolution of the largest value
        shown_floor = 1e-16 * max(float(s.eigenvalues[c][0]) for s in sets)
        for s in sets:
            ev = s.eigenvalues[c]
            pos = np.maximum(ev, shown_floor)
            idx = np.arange(1, len(ev) + 1)
            style = {"label": s.name, "lw": 1.2, "ls": "--" if s.attack == "reconstruction" else "-"}
            axes[row, 0].semilogy(idx, pos, **style)
            axes[row, 1].plot(idx[:top], ev[:top], marker=".", ms=3, **style)
            axes[row, 2].semilogy(idx[top:], pos[top:], **style)
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
    # fixed margins: tight_layout draws every text once more (as long again as the save)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.6 / height, top=1 - (0.75 if title else 0.4) / height,
                        wspace=0.18, hspace=0.45)
    titles = [ax.get_title() for ax in axes.flat]
    save_figure(fig, path)
    return titles


def auto_attack(meta: dict) -> str:
    """The paper's choice: a model trained against one on-manifold attack (VAE-adv, eigen-adv) is
    attacked with it, every other model with PGD."""
    from ..training import MODES

    m = MODES.get(meta.get("mode"))
    return m.attacks[0] if m is not None and len(m.attacks) == 1 and not m.regular else "pgd"


def compute(checkpoints, ds, classes, dev, *, attack="auto", cvae=None, basis=None, batch_size=500, seed=0, steps=None,
            reconstructions: bool = False, top: int = TOP, precision: str = "fp32", compile: bool = False,
            budgets: dict | None = None):
    """The clean set, then one robust set per checkpoint (a path, or a (model, record) pair of
    models.loading), attacked with `attack`, or per `auto_attack`.
    basis: the class eigenbasis of the eigenspace attacks, or a function making it when one is needed.

    Each robust set also records the share of its perturbations' energy in the clean class's `top`
    leading eigen-directions. reconstructions: also the set G_y(I_y(x)) of each CVAE a latent
    attack uses, as that set's baseline. precision, compile: how the classifiers run (accel.py)."""
    sets = []
    with console.progress() as bar:
        n = int(sum(int((ds.test.y == c).sum()) for c in classes))

        def measure(label, energy=None, **kw):
            task = bar.add_task(label, total=n, status="")
            with console.doing(f"while measuring the spectra of {label}", "nothing was written"):
                counts, _, covs = accumulate(ds.test, classes, device=dev, batch_size=batch_size, seed=seed,
                                             progress=bar, task=task, energy=energy, **kw)
            return counts.cpu().numpy(), class_spectra(counts, covs, classes), covs

        counts, spectra, covs = measure("clean")
        sets.append(SetSpectrum("clean", None, "none", counts, spectra))
        directions = top_directions(covs, spectra, top) if checkpoints else {}
        for item in checkpoints:
            if isinstance(item, tuple):  # (model, record) as models.loading gives it
                model, rec = item
                path, meta, stem = rec["ref"], rec["meta"] or {}, rec["label"]
            else:
                path = item
                model, meta = checkpoint.load_model(path, kind="classifier", device=dev)
                stem = Path(path).stem
            model = accel.prepare(model, precision=precision, compile=compile, device=dev)
            name = attack if attack != "auto" else auto_attack(meta)
            if name == "none":
                continue
            cvae_model = baseline = None
            if name == "vae":
                cvae_path = cvae or (meta.get("hparams") or {}).get("cvae")
                if not cvae_path:
                    raise UsageError(f"the vae attack on {path} needs --cvae (the checkpoint names no CVAE)")
                cvae_model, _ = checkpoint.load_model(Path(cvae_path), kind="cvae", device=dev, dataset=ds.name)
                if reconstructions:
                    baseline = f"reconstruction / {Path(cvae_path).stem}"
                    if all(s.name != baseline for s in sets):
                        counts, spectra, _ = measure(baseline, transform=reconstructed(cvae_model))
                        sets.append(SetSpectrum(baseline, str(cvae_path), "reconstruction", counts, spectra))
            if "basis" in needs(name) and callable(basis):
                basis = basis()
            given = {k: v for k, v in (budgets or {}).items() if v is not None}
            if cvae_model is not None and "latent" not in given:
                given["latent"] = latent_eps(ds.name, cvae_model.latent)
            spec = spec_for(name, ds.name, steps=steps, budgets=given)
            label = f"{meta.get('mode') or stem}-adv / {name}"
            energy = PerturbationEnergy(directions)
            counts, spectra, _ = measure(label, energy, transform=attacked(model, spec, cvae_model, basis))
            sets.append(SetSpectrum(label, str(path), name, counts, spectra, baseline, energy.fractions()))
    return sets


def dimension(sets) -> int | None:
    """The data dimension d (the length of any spectrum); None when no class has one."""
    return next((len(ev) for s in sets for ev in s.eigenvalues.values()), None)


def to_json(sets, summary, classes, floor_rel, top):
    return {
        "classes": classes,
        "top": top,
        "floor_rel": floor_rel,
        "ratio": "geometric mean of max(set, floor)/max(reference, floor) over eigenvalue indices; "
                 "floor = floor_rel x the reference class's largest eigenvalue",
        "top_energy": "share of sum ||d||^2 in the clean class's top leading eigen-directions, d = x_adv - x "
                      "(latent attacks: G(z') - G(I(x)))",
        "top_energy_isotropic": top / dim if (dim := dimension(sets)) else None,
        "sets": [
            {"name": s.name, "checkpoint": s.checkpoint, "attack": s.attack, "baseline": s.baseline, "class": c,
             "n": int(s.counts[c]), "eigenvalues": ev.tolist()}
            for s in sets for c, ev in s.eigenvalues.items()
        ],
        "summary": summary,
    }
