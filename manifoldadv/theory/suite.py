"""The machinery of ``checks``: a ``Check`` entry (what it checks, its tolerance kind and
tolerance, when it applies, the function computing it), its ``Outcome``, the ``Context`` the
checks of one case share, and ``evaluate``, which turns an entry into a row.

Kinds: ``z`` (Monte Carlo |z| <= tolerance), ``z>`` (|z| above it: a rejection), ``rel`` / ``abs``
(error <= tolerance), ``bool`` (the function says). A check with nothing to compare (an infinite
closed form, two forms that coincide) is *not applicable*: ``passed`` is None, never a pass. A
NaN error fails every kind.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .closed_form import STRATEGIES


@dataclass
class Case:
    """A spectrum the checks run on, with its latent dimension and Lagrange multipliers."""

    name: str
    lam: np.ndarray
    q: int
    L: float = 4.0
    Lp: float = 4.0

    @property
    def rank_q(self) -> bool:
        return bool(np.all(self.lam[self.q:] == 0))


@dataclass(frozen=True)
class Outcome:
    """What a check computed: the error, a note, the verdict of a ``bool`` check."""

    error: float
    note: str = ""
    passed: bool | None = None
    applicable: bool = True


def not_applicable(why: str) -> Outcome:
    return Outcome(math.nan, f"not applicable: {why}", applicable=False)


def passes(kind: str, error: float, tolerance: float) -> bool:
    """The verdict of a measured check; NaN fails both directions."""
    return bool(error > tolerance) if kind == "z>" else bool(error <= tolerance)


@dataclass(frozen=True)
class Check:
    """One entry of a check list; ``compute(ctx, strategy)`` returns an ``Outcome`` or the error."""

    name: str  # what it checks; "{j}" is the strategy of a per-strategy check
    kind: str  # z, z>, rel, abs or bool (module docstring)
    tolerance: float | Callable[[Case], float]
    compute: Callable[["Context", int | None], Outcome | float]
    when: Callable[[Case], bool] = lambda case: True
    case: str | None = None  # the fixed problem of a suite check
    strategy: int | None = None


def per_strategy(*checks: Check) -> list[Check]:
    """The checks once per strategy, strategy-major (``a1 b1 a2 b2 ...``)."""
    return [dataclasses.replace(c, strategy=j) for j in STRATEGIES for c in checks]


class Context:
    """What the checks of one case (or of the suite) share: Monte Carlo runs feeding several
    checks, computed once. A random stream takes the suite's next seed the first time a check
    asks for it, so the order of the check lists fixes every seed."""

    def __init__(self, suite: Suite, case: Case | None):
        self.suite, self.case = suite, case
        self._seeds: dict = {}
        self._memo: dict = {}

    def seed(self, key) -> int:
        if key not in self._seeds:
            self.suite.last_seed += 1
            self._seeds[key] = self.suite.last_seed
        return self._seeds[key]

    def memo(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]


@dataclass
class Suite:
    """The settings of one run of the checks and its seed counter."""

    samples: int
    seed: int
    simulate_samples: int
    last_seed: int = 0


def evaluate(check: Check, ctx: Context) -> dict:
    """One row: check, case, error, tolerance, kind, passed (None: not applicable), note."""
    case = ctx.case if check.case is None else None
    out = check.compute(ctx, check.strategy)
    out = out if isinstance(out, Outcome) else Outcome(out)
    tol = check.tolerance(case) if callable(check.tolerance) else check.tolerance
    if not out.applicable:
        passed = None
    elif check.kind == "bool":
        passed = bool(out.passed)
    else:
        passed = passes(check.kind, float(out.error), tol)
    return {"check": check.name.format(j=check.strategy), "case": check.case or ctx.case.name,
            "error": float(out.error), "tolerance": float(tol), "kind": check.kind, "passed": passed,
            "note": out.note}
