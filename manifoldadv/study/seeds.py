"""Error bars: a table cell measured over training seeds and evaluation seeds, and how it stands
against the paper's number.

A sample is (training seed, evaluation seed, accuracy). The spread is the sample standard
deviation (ddof 1) over every sample of the cell; beside it, the part due to the attack's
randomness (the evaluation seeds, pooled within each training seed) and the part due to training
(the standard deviation of the per-training-seed means). A deterministic attack (clean, FGSM,
the latent FGSM) is measured once per model: its evaluation spread is 0 by construction.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

# against the paper: within about two standard deviations of our mean, else within 5 pp, else off.
# The paper's number is one run, a single draw: it is compared with the spread of our runs, not
# with the standard error of their mean.
SPREADS = 2.0
CLOSE = 0.05
VERDICTS = {"spread": "within spread", "close": "within 5 pp", "off": "off"}


def parse(text: str | None) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2), in order, without repeats; '' or None -> ()."""
    if not text:
        return ()
    from ..errors import UsageError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"seeds are whole numbers separated by commas, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise UsageError(f"seeds must be >= 0, got {text!r}")
    return tuple(dict.fromkeys(seeds))


def _std(values) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(samples: list[tuple[int, int, float]]) -> dict:
    """One cell from its (training seed, evaluation seed, value) samples."""
    if not samples:
        raise ValueError("a cell needs at least one sample")
    values = np.array([v for _, _, v in samples], dtype=np.float64)
    by_train = defaultdict(list)
    for t, _, v in samples:
        by_train[t].append(v)
    means = [float(np.mean(v)) for v in by_train.values()]
    within = [float(np.var(v, ddof=1)) for v in by_train.values() if len(v) > 1]
    return {"mean": float(values.mean()), "std": _std(values) or 0.0, "n": len(values),
            "min": float(values.min()), "max": float(values.max()),
            "train_seeds": sorted(by_train), "eval_seeds": sorted({e for _, e, _ in samples}),
            "train_std": _std(means), "eval_std": math.sqrt(sum(within) / len(within)) if within else None,
            "values": [[int(t), int(e), float(v)] for t, e, v in samples]}


def against(cell: dict, paper: float | None) -> str | None:
    """'spread', 'close' or 'off' (VERDICTS); None without a paper number."""
    if paper is None:
        return None
    gap = abs(cell["mean"] - paper)
    if cell["n"] > 1 and gap <= SPREADS * cell["std"]:
        return "spread"
    return "close" if gap <= CLOSE + 1e-12 else "off"


def difference(a: dict, b: dict) -> tuple[float, float]:
    """(mean of a - mean of b, its standard deviation from both spreads, taken as independent)."""
    return a["mean"] - b["mean"], math.hypot(a["std"], b["std"])


def decisively_below(a: dict, b: dict, margin: float = 0.01) -> bool:
    """a's mean is below b's by more than SPREADS standard deviations of the difference and `margin`."""
    d, s = difference(b, a)
    return d > max(SPREADS * s, margin)
