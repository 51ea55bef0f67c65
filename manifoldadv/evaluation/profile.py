"""A model's manifold robustness profile (Xiao et al., arXiv 2210.00430): its accuracy against l2
budgets on the manifold (`eigen`: in the class eigenspace) and off it (`eigen-off-l2`: orthogonal
to it) at the same norms, with unrestricted PGD-l2 (`l2`) beside them. The later paper's claim
made measurable: at each eps, which of on and off fools the model more often."""

from __future__ import annotations

import math
from pathlib import Path

from ..attacks import spec_for
from ..config import defaults
from ..errors import UsageError
from .accuracy import attack_accuracy, clean_accuracy

ON, OFF, FREE = "eigen", "eigen-off-l2", "l2"
CURVES = (ON, OFF, FREE)
LABELS = {ON: "on the manifold (eigen)", OFF: "off the manifold (eigen-off-l2)", FREE: "unrestricted (PGD-l2)"}
GRID = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # multiples of the data set's eigen eps


def default_grid(dataset: str) -> list[float]:
    eps = defaults(dataset).eigen.eps
    if eps is None:
        raise UsageError(f"data set {dataset} has no default eigenspace budget: give --eps-grid")
    return [round(eps * f, 6) for f in GRID]


def parse_grid(text: str | None, dataset: str) -> list[float]:
    if text is None:
        return default_grid(dataset)
    try:
        grid = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--eps-grid takes comma-separated l2 budgets, got {text!r}") from None
    if not grid or any(not (0 < e < float("inf")) for e in grid):
        raise UsageError(f"--eps-grid takes budgets > 0, got {text!r}")
    return sorted(set(grid))


def difference_se(on: float, off: float, n: int) -> float:
    """The standard error of on - off for two accuracies over the same n examples, taken as if they
    were independent (an upper bound when, as here, they are positively correlated)."""
    return math.sqrt((on * (1 - on) + off * (1 - off)) / max(n, 1))


def verdict(on: float, off: float, n: int) -> str:
    """Which fools more at one eps: the attack leaving the lower accuracy, when the two differ by
    more than two standard errors; else "neither" (within noise)."""
    if abs(on - off) <= 2 * difference_se(on, off, n):
        return "neither"
    return "on" if on < off else "off"


def profile(model, split, basis, grid, dataset: str, *, device, seed: int = 0, batch_size: int = 500,
            steps: int | None = None, restarts: int | None = None, label: str = "") -> dict:
    """{"clean", "eps", "curves": {attack: [accuracy per eps]}, "more_fooled_by": [on|off|neither
    per eps, see verdict], "difference_se": [per eps], "rows": every evaluation}."""
    curves, rows = {name: [] for name in CURVES}, []
    for eps in grid:
        for name in CURVES:
            spec = spec_for(name, dataset, budgets={"eigen": eps, "l2": eps}, steps=steps, restarts=restarts)
            res = attack_accuracy(model, split, spec, device=device, basis=basis, seed=seed, batch_size=batch_size,
                                  label=f"{label} / {name} eps {eps:g}")
            rows.append({"attack": name, **spec.as_dict(), **res})
            curves[name].append(res["accuracy"])
    n = len(split)
    return {"clean": clean_accuracy(model, split, device=device, batch_size=batch_size), "eps": list(grid),
            "curves": curves, "more_fooled_by": [verdict(a, b, n) for a, b in zip(curves[ON], curves[OFF])],
            "difference_se": [difference_se(a, b, n) for a, b in zip(curves[ON], curves[OFF])], "rows": rows}


def plot(path: Path, result: dict, title: str) -> None:
    """Accuracy against eps: the three curves, starting from the clean accuracy at eps 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..runtime.outputs import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4))
    eps = [0.0, *result["eps"]]
    for name, style in zip(CURVES, ("o-", "s-", "^--")):
        ax.plot(eps, [100 * result["clean"], *(100 * a for a in result["curves"][name])], style, label=LABELS[name],
                ms=4)
    ax.set_xlabel("l2 budget eps")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
