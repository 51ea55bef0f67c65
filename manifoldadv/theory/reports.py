"""The documents the ``theory`` commands print (``--json`` prints them as they are): each closed
form beside its numerical check, for one spectrum described by ``spectra.describe``."""

from __future__ import annotations

import math
import time

import numpy as np

from ..runtime import console
from ..errors import UsageError
from .checks import Case, verify
from .closed_form import STRATEGIES, as_spectrum, ppca, strategy_spectra
from .excess_risk import (corollary3, latent_excess_change, latent_excess_change_paper, latent_excess_perturbation,
                          latent_excess_risk, original_excess_bounds, original_excess_risk)
from .gaussian import rel_error
from .gda import simulate
from .min_max import augmentation_check
from .monte_carlo import bonferroni_z, mc_latent_excess, mc_original_excess, mc_strategy_moments, moments_zscore, zscore
from .saddle import amplification, augmentation, latent_saddle, original_saddle, rank_q_latent_ratio
from .solvers import fixed_point_latent, fixed_point_original
from .spectra import describe

PAPER_SLOPE = -2.0
ROTATE_MAX_D = 64  # Monte Carlo in a random rotation of the eigenbasis up to this d, in the eigenbasis above


def default_samples(n: int | None, d: int) -> int:
    """``n`` Monte Carlo samples, or when None a default: fewer for large d, where each costs d."""
    if n is not None:
        return n
    return 200_000 if d <= ROTATE_MAX_D else int(max(20_000, 2e9 // (d * 100)))


def strategies_report(lam, source: str, q: int, n: int | None, seed: int) -> dict:
    """Lemma 1: Lambda^(1..3), whether (2) and (3) coincide, and the second moments of x'
    sampled by each strategy's definition (``n`` samples, None: the default; none when 0)."""
    n = default_samples(n, lam.size)
    sp = strategy_spectra(lam, q)
    diff23 = float(np.max(np.abs(sp[1] - sp[2])))
    mc = None
    if n:
        console.log(f"Monte Carlo: {n} samples per strategy")
        mc = {}
        for j in STRATEGIES:
            m = mc_strategy_moments(lam, q, j, n, seed=seed + j, rotate=lam.size <= ROTATE_MAX_D)
            full = m["second_moment"].ndim == 2
            mc[str(j)] = {"variance": np.diagonal(m["second_moment"]) if full else m["second_moment"],
                          "stderr": np.diagonal(m["stderr"]) if full else m["stderr"],
                          "max_z": moments_zscore(m, sp[j - 1]), "z_threshold": bonferroni_z(m["second_moment"].size),
                          "entries": "full matrix" if full else "diagonal"}
        mc["n"] = n
    return {
        "spectrum": describe(lam, q, source),
        "eigenvalues": lam,
        "strategies": {str(j): sp[j - 1] for j in STRATEGIES},
        "coincide_2_3": diff23 <= 1e-12 * lam.max(),
        "max_abs_diff_2_3": diff23,
        "rank_q": bool(np.all(lam[q:] == 0)),
        "all_equal_eigenvalues": bool(np.max(np.abs(sp - lam)) <= 1e-12 * lam.max()),
        "monte_carlo": mc,
    }


def excess_risk_report(lam, source: str, q: int, L: float, Lp: float, strategy: int, n: int | None,
                       seed: int) -> dict:
    """Theorems 2 (both parts, the change part also as the paper states it), Corollary 3's value
    and Theorem 4 with its bounds, each beside a Monte Carlo estimate (``n`` samples as in
    ``strategies_report``)."""
    n = default_samples(n, lam.size)
    pert = float(latent_excess_perturbation(lam, q, L, strategy))
    ch = latent_excess_change(lam, q, strategy)
    chp = latent_excess_change_paper(lam, q, strategy)
    latent = {"perturbation": pert, "change_of_distribution": ch, "change_of_distribution_paper": chp,
              "total": pert + ch, "total_paper": pert + chp, "corollary3_if_rank_q": float(corollary3(q, L)),
              "monte_carlo": None, "monte_carlo_parts": None}
    val = float(original_excess_risk(lam, Lp))
    original = {"value": val, **{k: float(v) for k, v in original_excess_bounds(lam, Lp).items()}, "monte_carlo": None}
    if n:
        rotate = lam.size <= ROTATE_MAX_D
        console.log(f"Monte Carlo: {n} samples" + ("" if rotate else " (in the eigenbasis: d is large)"))
        mc = mc_latent_excess(lam, q, L, strategy, n, seed=seed, rotate=rotate)
        latent["monte_carlo"] = mc["total"]
        latent["monte_carlo_parts"] = {k: mc[k] for k in ("perturbation", "change_of_distribution")}
        latent["z"] = {"total": zscore(pert + ch, mc["total"]), "perturbation": zscore(pert, mc["perturbation"]),
                       "change_of_distribution": zscore(ch, mc["change_of_distribution"]),
                       "change_of_distribution_paper": zscore(chp, mc["change_of_distribution"])}
        original["monte_carlo"] = mc_original_excess(lam, Lp, n, seed=seed + 1, rotate=rotate)
        original["z"] = zscore(val, original["monte_carlo"])
    return {"spectrum": describe(lam, q, source), "L": L, "L_orig": Lp, "strategy": strategy,
            "latent": latent, "original": original}


def saddle_report(lam, source: str, q: int, L: float, Lp: float, strategy: int) -> dict:
    """Theorems 5 and 6: the saddle points, their amplification, and the fixed-point equations
    solved numerically."""
    ls, r = latent_saddle(lam, q, L, strategy), original_saddle(lam, Lp)
    fl, fo = fixed_point_latent(lam, q, L, strategy), fixed_point_original(lam, Lp)
    return {
        "spectrum": describe(lam, q, source), "L": L, "L_orig": Lp, "strategy": strategy, "eigenvalues": lam,
        "latent": ls, "original": r, "latent_ratio": amplification(ls, lam), "original_ratio": amplification(r, lam),
        "fixed_point_residual": max(fl["residual"], fo["residual"]),
        "fixed_point": {
            "latent": fl["solution"], "original": fo["solution"],
            "latent_residual": fl["residual"], "original_residual": fo["residual"],
            "latent_vs_closed_form": float(np.max(rel_error(fl["solution"], ls))),
            "original_vs_closed_form": float(np.max(rel_error(fo["solution"], r))),
            "original_boundary_coordinates": fo["boundary"],
        },
        "rank_q_ratio": float(rank_q_latent_ratio(L)),
    }


def fit_slope(L: np.ndarray, y) -> float | None:
    """Least-squares slope of log y against log L (None unless all values are finite and > 0)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        return None
    return float(np.polyfit(np.log(L), np.log(y), 1)[0])


def check_multipliers(L: float, Lp: float) -> None:
    """The latent and original-space Lagrange multipliers (``--L``, ``--L-orig``): finite, > 0."""
    for flag, value in (("--L", L), ("--L-orig", Lp)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} must be finite and > 0, got {value}")


def check_L_range(L_min: float, L_max: float) -> None:
    """A range of Lagrange multipliers for the rates: finite, ``1 < L_min < L_max``."""
    if not (math.isfinite(L_min) and math.isfinite(L_max) and 1.0 < L_min < L_max):
        raise UsageError(f"need 1 < --L-min < --L-max, got {L_min}, {L_max}")


def _slopes(Ls: np.ndarray, values: np.ndarray) -> dict:
    return {"slope": fit_slope(Ls, values), "tail_slope": fit_slope(Ls[-2:], values[-2:])}


def rates_report(lam, source: str, q: int, strategy: int, L_min: float, L_max: float, points: int, n: int,
                 seed: int, step=None) -> dict:
    """Excess risk against L (log-spaced from L_min to L_max, L' = L) with fitted log-log slopes:
    Corollary 3 (on the rank-q truncation of the spectrum), Theorem 2's perturbation part and
    Theorem 4, exact and by Monte Carlo (``n`` samples at each L; none when 0). ``step()`` is
    called after each L."""
    check_L_range(L_min, L_max)
    ppca(lam, q)
    Ls = np.geomspace(L_min, L_max, points)
    lam_q = lam.copy()
    lam_q[q:] = 0.0
    c3, th4 = corollary3(q, Ls), original_excess_risk(lam, Ls)
    c3_thm2 = latent_excess_risk(lam_q, q, Ls, strategy)
    pert = latent_excess_perturbation(lam, q, Ls, strategy)
    out = {
        "spectrum": describe(lam, q, source), "L": Ls, "q": q, "strategy": strategy,
        "corollary3": {"value": c3, "thm2_on_rank_q_spectrum": c3_thm2,
                       "max_rel_diff": float(np.max(np.abs(c3_thm2 - c3) / c3)), **_slopes(Ls, c3)},
        "theorem4": {"value": th4, **_slopes(Ls, th4), "L_orig": "equal to L"},
        "latent_perturbation": {"value": pert, "slope": fit_slope(Ls, pert)},
        "expected_slope": -1.0,
        "paper_claim": {"corollary3": PAPER_SLOPE, "theorem4": PAPER_SLOPE,
                        "text": "the paper states O(q L^-2) (Corollary 3) and O(d (lam_min L')^-2) (Theorem 4)"},
    }
    if not n:
        return out
    rotate = lam.size <= ROTATE_MAX_D
    console.log(f"Monte Carlo: {n} samples at each of {Ls.size} values of L")
    mc3, mc4 = [], []
    for i, Lv in enumerate(Ls):
        mc3.append(mc_latent_excess(lam_q, q, float(Lv), strategy, n, seed=seed + i, rotate=rotate)["total"])
        finite = np.isfinite(th4[i])
        mc4.append(mc_original_excess(lam, float(Lv), n, seed=seed + 1000 + i, rotate=rotate) if finite else None)
        if step is not None:
            step()
    for key, values, mcs in (("corollary3", c3, mc3), ("theorem4", th4, mc4)):
        out[key]["monte_carlo"] = mcs
        known = all(m is not None for m in mcs)
        out[key]["slope_monte_carlo"] = fit_slope(Ls, [m["mean"] for m in mcs]) if known else None
        if known:
            out[key]["max_z"] = max(zscore(float(v), m) for v, m in zip(values, mcs))
    return out


def augmentation_report(lam, source: str, q: int, n: int, m: int, seed: int) -> dict:
    """Theorem 8: augmenting n real samples with m generated ones, against scipy's optimum of the
    mixed objective (d <= 16) and m actual generated samples pooled with the real ones."""
    ppca(lam, q)
    if lam.size > 16:
        raise UsageError(f"augmentation optimises a full d x d covariance with scipy: d <= 16, got {lam.size}")
    chk = augmentation_check(lam, q, n, m, seed=seed)
    lam_hat = as_spectrum(chk["sample_eigenvalues"])
    da = augmentation(lam_hat, q, n, m)
    tail = slice(q, lam.size)

    def tail_error(x) -> float:
        return float(np.mean(np.abs(x[tail] - lam[tail]) / lam[tail])) if q < lam.size else 0.0

    return {
        "spectrum": describe(lam, q, source), "n": n, "m": m, "eigenvalues": lam, "sample_eigenvalues": lam_hat,
        "augmented": da, "numerical": chk["numerical"],
        "max_rel_error_numerical": float(np.max(np.abs(chk["numerical"] - da) / da)),
        "mean_error_numerical": chk["mean_error"], "generated_samples": chk["generated_samples"],
        "tail_rel_error_vs_truth": {"sample": tail_error(lam_hat), "augmented": tail_error(da)},
    }


def simulate_report(lam, source: str, q: int, L: float, Lp: float, strategy: int, **options) -> dict:
    """``gda.simulate`` (``options`` are its keywords) with its wall time and largest errors."""
    if lam.size > 128:
        raise UsageError(f"simulate keeps samples x d arrays in memory: d <= 128, got {lam.size}")
    ppca(lam, q)
    if options.get("n_fit") is not None and strategy != 3:
        raise UsageError("--n-fit (Theorem 9) is stated for strategy 3; use --strategy 3")
    console.log(f"gradient descent-ascent: {options.get('samples', 100_000)} samples, d={lam.size}, q={q}, "
                f"inner {options.get('inner', 'exact')}")
    t0 = time.perf_counter()
    res = simulate(lam, q, L, Lp, strategy, **options)
    res["wall_s"] = time.perf_counter() - t0
    res["spectrum"] = describe(lam, q, source)
    res["max_rel_error"] = {part: float(np.max(res[part]["rel_error"])) for part in ("original", "latent")}
    return res


def verify_case(lam, source: str, q: int, L: float, Lp: float) -> Case:
    """A spectrum of the user's as one more case of ``verify``."""
    ppca(lam, q)
    if lam.size > 256:
        raise UsageError(f"verify's Monte Carlo works with d <= 256, got {lam.size}")
    return Case(source, lam, q, L, Lp)


def verify_report(cases, samples: int, seed: int, progress=None) -> dict:
    """``checks.verify`` with the counts: ``passed`` is true when no check failed (a check that is
    not applicable is neither a pass nor a failure)."""
    t0 = time.perf_counter()
    rows = verify(cases, samples=samples, seed=seed, progress=progress)
    failed = sum(r["passed"] is False for r in rows)
    return {"checks": rows, "passed": not failed, "n_checks": len(rows), "n_failed": failed,
            "wall_s": time.perf_counter() - t0}
