"""``verify``: every closed form of the theory against an independent numerical computation
(THEORY.md, "What verified means here"), as declarative lists of checks.

``CASE_CHECKS`` run on every spectrum (a ``Case``: ``default_cases`` and the user's);
``SUITE_CHECKS`` run once, each on its own fixed problem. An entry names what it checks, its
tolerance kind and tolerance, when it applies and the function computing it (``suite.Check``;
the kinds and what *not applicable* means are in ``suite``). Rows come out in list order, and
that order fixes the seeds (``suite.Context``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .closed_form import as_spectrum, strategy_spectra, strategy_spectrum
from .excess_risk import (corollary3, latent_excess_change, latent_excess_change_paper, latent_excess_perturbation,
                          latent_excess_risk, original_excess_bounds, original_excess_risk)
from .gaussian import rel_error
from .gda import simulate
from .min_max import augmentation_check, brute_saddle, ilyas_matrix_form
from .monte_carlo import (FULL_MOMENTS_MAX_D, bonferroni_z, mc_latent_excess, mc_original_excess, mc_strategy_moments,
                          moments_zscore, zscore)
from .saddle import augmentation, latent_saddle, original_saddle, rank_q_latent_ratio
from .solvers import fixed_point_latent, fixed_point_original, inner_max_trials, lagrangian_unbounded
from .suite import Case, Check, Context, Outcome, Suite, evaluate, not_applicable, per_strategy

REJECTION_SAMPLES = 200_000  # rejecting the paper's change form needs this much power


def default_cases(seed: int = 0) -> list[Case]:
    """The spectra verify runs on: a toy, a random full-rank one, rank-q data, a power law."""
    rng = np.random.default_rng(12345 + seed)
    return [
        Case("toy 4,2,1,0.5", as_spectrum([4, 2, 1, 0.5]), 2),
        Case("random d=8", as_spectrum(np.exp(rng.normal(0.0, 1.0, 8))), 3, 3.0, 6.0),
        Case("rank-3 d=6", as_spectrum([5, 3, 2, 0, 0, 0]), 3, 2.5, 4.0),
        Case("powerlaw d=32", as_spectrum(np.arange(1, 33, dtype=float) ** -1.0), 4, 4.0, 4.0),
    ]


# --------------------------------------------------------------------------- per case


def _moment_entries(c: Case) -> int:
    return c.lam.size ** 2 if c.lam.size <= FULL_MOMENTS_MAX_D else c.lam.size


def _latent_mc(ctx: Context, j: int) -> dict:
    """Theorem 2's Monte Carlo for strategy j: one run feeds the three parts and the rejection."""
    c, n = ctx.case, ctx.suite.samples
    return ctx.memo(("latent", j), lambda: mc_latent_excess(c.lam, c.q, c.L, j, n, seed=ctx.seed(("latent", j))))


def _lemma1_moments(ctx: Context, j: int) -> Outcome:
    c = ctx.case
    mc = mc_strategy_moments(c.lam, c.q, j, ctx.suite.samples // 2, seed=ctx.seed(("lemma1", j)))
    m = mc["second_moment"].size
    return Outcome(moments_zscore(mc, strategy_spectrum(c.lam, c.q, j)), f"{m} entries, Bonferroni threshold")


def _spectra_rel(ctx: Context, pick) -> float:
    c = ctx.case
    return np.max(np.abs(pick(strategy_spectra(c.lam, c.q), c.lam))) / c.lam.max()


def _thm2_part(part: str):
    def compute(ctx: Context, j: int) -> float:
        c = ctx.case
        pert, ch = float(latent_excess_perturbation(c.lam, c.q, c.L, j)), latent_excess_change(c.lam, c.q, j)
        closed = {"perturbation": pert, "change_of_distribution": ch, "total": pert + ch}[part]
        return zscore(closed, _latent_mc(ctx, j)[part])
    return compute


def _paper_form_rejected(ctx: Context, j: int) -> Outcome:
    c = ctx.case
    ch, chp = latent_excess_change(c.lam, c.q, j), latent_excess_change_paper(c.lam, c.q, j)
    if math.isfinite(chp) and abs(chp - ch) <= 1e-12 * max(1.0, abs(ch)):
        return not_applicable("the paper's log term is 0 here: the forms coincide")
    mc = _latent_mc(ctx, j)
    if ctx.suite.samples < REJECTION_SAMPLES and strategy_spectrum(c.lam, c.q, j).min() > 0:
        mc = mc_latent_excess(c.lam, c.q, c.L, j, REJECTION_SAMPLES, seed=ctx.seed(("latent", j)) + 10_000)
    return Outcome(zscore(chp, mc["change_of_distribution"]), f"paper's form = {chp:.4g}: rejected by Monte Carlo")


def _corollary3_exact(c: Case) -> float:
    tot, c3 = float(latent_excess_risk(c.lam, c.q, c.L, 1)), float(corollary3(c.q, c.L))
    return abs(tot - c3) / c3


def _corollary3_monte_carlo(ctx: Context, j) -> float:
    c = ctx.case
    mc = mc_latent_excess(c.lam, c.q, c.L, 1, ctx.suite.samples, seed=ctx.seed("corollary3"))
    return zscore(float(corollary3(c.q, c.L)), mc["total"])


def _theorem4_monte_carlo(ctx: Context, j) -> Outcome:
    c = ctx.case
    val = float(original_excess_risk(c.lam, c.Lp))
    mc = mc_original_excess(c.lam, c.Lp, ctx.suite.samples, seed=ctx.seed("theorem4"))
    # Without a maximiser the estimator samples nothing (n = 0) and says +inf: the same condition
    # as the closed form, not evidence for it. Where only one side is infinite z is inf: a failure.
    if mc["n"] == 0 and math.isinf(val):
        return not_applicable("the closed form is +inf (L' lam_min <= 1) and the Lagrangian has no maximiser "
                              "to sample")
    return Outcome(zscore(val, mc))


def _theorem4_bounds(ctx: Context, j) -> Outcome:
    c = ctx.case
    val = float(original_excess_risk(c.lam, c.Lp))
    b = original_excess_bounds(c.lam, c.Lp)
    return Outcome(0.0, f"{float(b['lower_bound']):.4g} <= {val:.4g} <= {float(b['upper_bound']):.4g}",
                   passed=b["lower_bound"] <= val <= b["upper_bound"])


def _fixed_point(ctx: Context, j: int | None) -> dict:
    c = ctx.case
    if j is None:
        return ctx.memo("fp", lambda: fixed_point_original(c.lam, c.Lp))
    return ctx.memo(("fp", j), lambda: fixed_point_latent(c.lam, c.q, c.L, j))


def _theorem6_residual(ctx: Context, j) -> Outcome:
    fp = _fixed_point(ctx, None)
    nb = fp["boundary"]
    return Outcome(fp["residual"], f"{nb} zero eigenvalue(s): optimum on the boundary 1/L'" if nb else "")


def _closed_vs_fixed_point(ctx: Context, j) -> float:
    c = ctx.case
    closed = original_saddle(c.lam, c.Lp) if j is None else latent_saddle(c.lam, c.q, c.L, j)
    return np.max(rel_error(_fixed_point(ctx, j)["solution"], closed))


def _singular(c: Case) -> bool:
    return bool(c.lam.min() == 0)


def _rotation_seed(ctx: Context) -> int:
    """The seed the optimisation checks draw their random rotation from: the case's last Monte
    Carlo seed (Theorem 4's)."""
    return ctx.seed("theorem4")


def _ilyas(ctx: Context, j) -> Outcome:
    c = ctx.case
    return Outcome(ilyas_matrix_form(c.lam, c.Lp, seed=_rotation_seed(ctx))["max_rel_diff"],
                   "singular Sigma*: sqrtm is accurate to ~sqrt(eps)" if _singular(c) else "")


def _min_max(restrict: bool):
    def compute(ctx: Context, j) -> float:
        c = ctx.case
        bs = brute_saddle(c.lam, None if j is None else c.q, c.Lp if j is None else c.L, 3 if j is None else j,
                          restrict=restrict, seed=_rotation_seed(ctx))
        ref = original_saddle(c.lam, c.Lp) if j is None else latent_saddle(c.lam, c.q, c.L, j)
        return max(float(np.max(np.abs(bs["in_data_basis"] - ref)) / ref.max()), bs["off_diagonal"])
    return compute


def _small(c: Case) -> bool:  # nested scipy min-max over full covariances: small d only
    return c.lam.size <= 8


CASE_CHECKS: list[Check] = [
    *per_strategy(Check("Lemma 1: x' second moments, strategy {j}", "z",
                        lambda c: bonferroni_z(_moment_entries(c)), _lemma1_moments)),
    Check("Lemma 1: Lambda(2) == Lambda(3)", "rel", 1e-12, lambda ctx, j: _spectra_rel(ctx, lambda s, lam: s[1] - s[2])),
    Check("Lemma 1: rank q => all strategies = Lambda*", "rel", 1e-12,
          lambda ctx, j: _spectra_rel(ctx, lambda s, lam: s - lam), when=lambda c: c.rank_q),
    *per_strategy(Check("Thm 2: perturbation part, strategy {j}", "z", 4.0, _thm2_part("perturbation")),
                  Check("Thm 2: change of distribution, strategy {j}", "z", 4.0, _thm2_part("change_of_distribution")),
                  Check("Thm 2: total, strategy {j}", "z", 4.0, _thm2_part("total"))),
    *per_strategy(Check("Thm 2: paper's change form rejected, strategy {j}", "z>", 4.0, _paper_form_rejected)),
    Check("Cor 3: Thm 2 total = q(2L-1)/(2(L-1)^2)", "rel", 1e-12,
          lambda ctx, j: _corollary3_exact(ctx.case), when=lambda c: c.rank_q),
    Check("Cor 3: Monte Carlo", "z", 4.0, _corollary3_monte_carlo, when=lambda c: c.rank_q),
    Check("Thm 4: excess risk (Monte Carlo)", "z", 4.0, _theorem4_monte_carlo),
    Check("Thm 4: proof's bounds t/2 <= value <= d t/2", "bool", 0.0, _theorem4_bounds,
          when=lambda c: math.isfinite(float(original_excess_risk(c.lam, c.Lp)))),
    *per_strategy(Check("Thm 5: fixed-point residual, strategy {j}", "rel", 1e-10,
                        lambda ctx, j: _fixed_point(ctx, j)["residual"]),
                  Check("Thm 5: closed form = fixed point, strategy {j}", "rel", 1e-10, _closed_vs_fixed_point)),
    Check("Thm 6: fixed-point residual", "rel", 1e-10, _theorem6_residual),
    Check("Thm 6: closed form = fixed point", "rel", 1e-10, _closed_vs_fixed_point),
    Check("Thm 6: = Ilyas et al. matrix form (scipy sqrtm)", "rel", lambda c: 1e-7 if _singular(c) else 1e-10, _ilyas),
    Check("Thm 5: rank q ratio = 1/2 + 1/L + sqrt(1/4 + 1/L)", "abs", 1e-12,
          lambda ctx, j: np.max(np.abs(latent_saddle(ctx.case.lam, ctx.case.q, ctx.case.L, 1)[:ctx.case.q]
                                       / ctx.case.lam[:ctx.case.q] - rank_q_latent_ratio(ctx.case.L))),
          when=lambda c: c.rank_q),
    *per_strategy(Check("Thm 5: nested scipy min-max (eigenbasis), strategy {j}", "rel", 1e-6, _min_max(True), _small),
                  Check("Thm 5: nested scipy min-max (any Sigma), strategy {j}", "rel", 1e-6, _min_max(False), _small)),
    # with a zero eigenvalue Theorem 6's optimum sits on the domain boundary, out of BFGS's reach
    *[Check(f"Thm 6: nested scipy min-max ({basis})", "rel", 1e-6, _min_max(restrict),
            lambda c: _small(c) and not _singular(c)) for basis, restrict in (("eigenbasis", True), ("any Sigma", False))],
]


# --------------------------------------------------------------------------- once per suite


def _inner_max(key: str):
    return lambda ctx, j: ctx.memo("inner", lambda: inner_max_trials(3, seed=ctx.suite.seed))[key]


def _unbounded(ctx: Context, j) -> Outcome:
    along = lagrangian_unbounded([4.0, 2.0, 1.0, 0.2], 4.0, seed=ctx.suite.seed)["along_min_direction"]
    grows = all(b > a for a, b in zip(along, along[1:]))
    return Outcome(0.0, f"Lagrangian reaches {along[-1]:.3g} at distance 1e6", passed=grows and along[-1] > 1e10)


def _augmentation(ctx: Context, j) -> float:
    aug = augmentation_check(as_spectrum([4.0, 2.0, 1.0, 0.5, 0.2]), 2, 60, 240, seed=ctx.suite.seed)
    ref = augmentation(aug["sample_eigenvalues"], 2, 60, 240)
    return np.max(np.abs(aug["numerical"] - ref) / ref)


SIMULATION_SPECTRUM = (5, 4, 3, 2, 1.5, 1, 0.75, 0.5)


def _simulation(j: int | None, n_fit: int | None = None) -> Callable[[Context], dict]:
    """The gradient descent-ascent run a simulation check reads: per strategy (the original-space
    part once, with strategy 1), or with a generator fitted on ``n_fit`` samples."""
    def run(ctx: Context) -> dict:
        s = ctx.suite
        return ctx.memo(("sim", j, n_fit), lambda: simulate(
            as_spectrum(SIMULATION_SPECTRUM), 3, 4.0, 4.0, 3 if j is None else j, samples=s.simulate_samples,
            n_fit=n_fit, seed=s.seed + (0 if j is None else j), original=j == 1))
    return run


def _simulated(part: str, key: str, j_fixed: int | None = None):
    return lambda ctx, j: _simulation(j_fixed or j)(ctx)[part][key].max()


def _theorem9(ctx: Context, j) -> Outcome:
    lat = _simulation(None, n_fit=200)(ctx)["latent"]
    return Outcome(lat["rel_error_theorem9"].max(), f"vs population Thm 5: {lat['rel_error'].max():.3f}")


SUITE_CHECKS: list[Check] = [
    Check("Lemma 2: latent inner max (scipy, random non-diagonal)", "rel", 1e-5, _inner_max("lemma2"), case="random SPD"),
    Check("Lemma 6: matrix inner max (scipy, random non-diagonal)", "rel", 1e-6, _inner_max("lemma6"), case="random SPD"),
    Check("Thm 4: original inner max (scipy, random non-diagonal)", "rel", 1e-5, _inner_max("original"),
          case="random SPD"),
    Check("Thm 4: sup unbounded when L' lam_min < 1", "bool", 0.0, _unbounded, case="4,2,1,0.2 L'=4"),
    Check("Thm 8: scipy optimum = closed form", "rel", 1e-6, _augmentation, case="4,2,1,0.5,0.2 n=60 m=240"),
    Check("Simulation: original space vs Thm 6", "rel", 0.03, _simulated("original", "rel_error", 1), case="d=8 q=3"),
    Check("Simulation: original space vs Thm 6 at sample moments", "rel", 1e-6,
          _simulated("original", "rel_error_at_sample", 1), case="d=8 q=3"),
    *per_strategy(Check("Simulation: latent space vs Thm 5, strategy {j}", "rel", 0.03,
                        _simulated("latent", "rel_error"), case="d=8 q=3"),
                  Check("Simulation: latent vs Thm 5 at sample moments, strategy {j}", "rel", 1e-6,
                        _simulated("latent", "rel_error_at_sample"), case="d=8 q=3")),
    Check("Thm 9: latent training, generator fitted on n=200, vs Thm 9", "rel", 0.03, _theorem9, case="d=8 q=3"),
]


# --------------------------------------------------------------------------- the suite


def verify(cases: list[Case] | None = None, *, samples: int = 200_000, seed: int = 0,
           simulate_samples: int = 100_000, progress=None) -> list[dict]:
    """Every check on every case, then the suite checks; ``progress(check, case, passed)`` after
    each row."""
    suite = Suite(samples, seed, simulate_samples, last_seed=seed)
    plan = []
    for case in default_cases(seed) if cases is None else cases:
        ctx = Context(suite, case)
        plan += [(c, ctx) for c in CASE_CHECKS if c.when(case)]
    ctx = Context(suite, None)
    plan += [(c, ctx) for c in SUITE_CHECKS]
    rows = []
    for check, ctx in plan:
        rows.append(evaluate(check, ctx))
        if progress is not None:
            progress(rows[-1]["check"], rows[-1]["case"], rows[-1]["passed"])
    return rows


def check_row(name: str, case: Case | None = None, *, samples: int = 20_000, seed: int = 0,
              simulate_samples: int = 100_000) -> dict:
    """One check, by the name its row shows, on one case (a suite check: no case), in a fresh
    context (its seeds differ from the whole suite's)."""
    for check in CASE_CHECKS if case is not None else SUITE_CHECKS:
        if check.name.format(j=check.strategy) == name:
            if case is not None and not check.when(case):
                raise ValueError(f"{name!r} does not apply to {case.name!r}")
            return evaluate(check, Context(Suite(samples, seed, simulate_samples, last_seed=seed), case))
    raise KeyError(name)
