"""The closed forms of manifoldadv.theory against independent numerical computations:
Monte Carlo (within 4 standard errors), scipy optimisation (random non-diagonal matrices),
fixed-point solves and gradient descent-ascent on samples."""

import math
import time

import numpy as np
import pytest
from scipy import optimize

from manifoldadv import theory as T
from manifoldadv.theory import checks, gaussian, min_max, monte_carlo, solvers, suite
from manifoldadv.errors import UsageError

FULL = T.as_spectrum([3.0, 2.5, 1.0, 0.4, 0.2, 0.1])  # full rank, non-flat tail
RANKQ = T.as_spectrum([5.0, 3.0, 2.0, 0.0, 0.0, 0.0])  # rank 3


# --------------------------------------------------------------------------- spectra, P-PCA


def test_as_spectrum_sorts_zeroes_roundoff_and_rejects_bad_input():
    lam = T.as_spectrum([0.5, 4.0, -1e-17, 2.0])
    assert lam.tolist() == [4.0, 2.0, 0.5, 0.0]
    for bad in ([1.0, -0.1], [], [[1.0]], [1.0, float("nan")], [0.0, 0.0]):
        with pytest.raises(UsageError):
            T.as_spectrum(bad)
    with pytest.raises(UsageError, match="rank"):
        T.ppca(RANKQ, 4)
    with pytest.raises(UsageError):
        T.strategy_spectrum(FULL, 2, 4)


def test_ppca_is_the_maximum_likelihood_fit():
    """Tipping & Bishop's closed form against scipy maximising the Gaussian log-likelihood of
    N(mu, W W^T + sigma2 I) over W (d x q) and sigma2 for a random non-diagonal covariance."""
    rng = np.random.default_rng(3)
    lam, q = T.as_spectrum([4.0, 2.0, 1.0, 0.6, 0.3]), 2
    U = gaussian.random_rotation(5, rng)
    S = (U * lam) @ U.T

    def negll(theta):
        W = theta[:-1].reshape(5, q)
        Cm = W @ W.T + math.exp(theta[-1]) * np.eye(5)
        return np.linalg.slogdet(Cm)[1] + np.trace(np.linalg.solve(Cm, S))

    res = optimize.minimize(negll, np.concatenate([rng.standard_normal(5 * q), [0.0]]), method="BFGS",
                            options={"gtol": 1e-10})
    W = res.x[:-1].reshape(5, q)
    model = np.sort(np.linalg.eigvalsh(W @ W.T + math.exp(res.x[-1]) * np.eye(5)))[::-1]
    sigma2, a = T.ppca(lam, q)
    expected = T.strategy_spectrum(lam, q, 3)  # W W^T + sigma2 I = U diag(lam_q, sigma2...) U^T
    assert math.exp(res.x[-1]) == pytest.approx(sigma2, rel=1e-5)
    np.testing.assert_allclose(model, expected, rtol=1e-5)
    Wc, s2 = T.ppca_matrices(U, lam, q)
    np.testing.assert_allclose(Wc.T @ Wc + s2 * np.eye(q), np.diag(lam[:q]), atol=1e-12)  # P = Lambda_q


# --------------------------------------------------------------------------- Lemma 1


@pytest.mark.parametrize("lam,q", [(FULL, 2), (RANKQ, 3)], ids=["full-rank", "rank-q"])
@pytest.mark.parametrize("strategy", [1, 2, 3])
def test_lemma1_second_moments_monte_carlo(lam, q, strategy):
    mc = monte_carlo.mc_strategy_moments(lam, q, strategy, 60_000, seed=strategy)
    assert mc["second_moment"].shape == (lam.size, lam.size)  # the whole matrix: off-diagonals are 0 too
    z = monte_carlo.moments_zscore(mc, T.strategy_spectrum(lam, q, strategy))
    assert z <= monte_carlo.bonferroni_z(mc["second_moment"].size)


def test_lemma1_wrong_spectrum_is_rejected_by_the_same_monte_carlo():
    # The check has power: strategy 2's samples do not match strategy 1's formula.
    mc = monte_carlo.mc_strategy_moments(FULL, 2, 2, 60_000, seed=5)
    assert monte_carlo.moments_zscore(mc, T.strategy_spectrum(FULL, 2, 1)) > 20


def test_strategies_2_and_3_coincide():
    """Lambda^(2) as written equals Lambda^(3); and samples drawn by the two definitions have the
    same second moments (compared with each other, no formula involved)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        lam = T.as_spectrum(np.exp(rng.normal(0, 1.5, 7)))
        q = int(rng.integers(1, 7))
        sp = T.strategy_spectra(lam, q)
        np.testing.assert_allclose(sp[1], sp[2], rtol=1e-12, atol=0)
    m2 = monte_carlo.mc_strategy_moments(FULL, 2, 2, 60_000, seed=11)
    m3 = monte_carlo.mc_strategy_moments(FULL, 2, 3, 60_000, seed=12)
    z = np.abs(m2["second_moment"] - m3["second_moment"]) / np.hypot(m2["stderr"], m3["stderr"])
    assert z.max() <= monte_carlo.bonferroni_z(z.size)
    assert not np.allclose(sp[0], sp[2])  # strategy 1 is different


def test_rank_q_makes_all_strategies_equal_lambda_star():
    sp = T.strategy_spectra(RANKQ, 3)
    np.testing.assert_allclose(sp, np.broadcast_to(RANKQ, sp.shape), rtol=1e-12, atol=0)
    assert T.ppca(RANKQ, 3)[0] == 0.0
    for j in (1, 2, 3):
        mc = monte_carlo.mc_strategy_moments(RANKQ, 3, j, 20_000, seed=20 + j)
        assert monte_carlo.moments_zscore(mc, RANKQ) <= monte_carlo.bonferroni_z(mc["second_moment"].size)


# --------------------------------------------------------------------------- Lemma 2 / 6, inner max


def test_inner_maximisers_match_scipy_on_random_non_diagonal_problems():
    errs = solvers.inner_max_trials(trials=3, d=6, q=3, seed=7)
    assert errs["lemma2"] < 1e-5
    assert errs["lemma6"] < 1e-6
    assert errs["original"] < 1e-5
    # the problems really are non-diagonal
    S = gaussian.random_spd(6, np.random.default_rng(1))
    assert np.abs(S - np.diag(np.diag(S))).max() > 0.1 * np.abs(S).max()


def test_latent_gain_is_lemma2_in_the_eigenbasis():
    """f_i - 1 is the eigenvalue of W M (M = W^T (L Sigma* - W W^T)^-1) along u_i."""
    rng = np.random.default_rng(2)
    U = gaussian.random_rotation(FULL.size, rng)
    W, _ = T.ppca_matrices(U, FULL, 2)
    Sigma = (U * FULL) @ U.T
    for L in (1.3, 4.0, 50.0):
        WM = W @ T.latent_perturbation_matrix(W, Sigma, L)
        np.testing.assert_allclose(U.T @ WM @ U, np.diag(T.latent_gain(FULL, 2, L) - 1.0), atol=1e-12)
        B = T.original_perturbation_matrix(Sigma, L * 10)
        np.testing.assert_allclose(U.T @ B @ U, np.diag(T.original_gain(FULL, L * 10) - 1.0), atol=1e-12)


# --------------------------------------------------------------------------- Theorem 2, Corollary 3


@pytest.mark.parametrize("lam,q,L", [(FULL, 2, 3.0), (RANKQ, 3, 2.0), (T.as_spectrum([4, 2, 1, 0.5]), 2, 1.5),
                                     (T.as_spectrum([4, 2, 1, 0]), 2, 4.0)],
                         ids=["full-rank", "rank-q", "toy-L1.5", "singular-noise"])
@pytest.mark.parametrize("strategy", [1, 2, 3])
def test_theorem2_both_parts_monte_carlo(lam, q, L, strategy):
    mc = monte_carlo.mc_latent_excess(lam, q, L, strategy, 60_000, seed=strategy)
    pert = float(T.latent_excess_perturbation(lam, q, L, strategy))
    ch = T.latent_excess_change(lam, q, strategy)
    assert monte_carlo.zscore(pert, mc["perturbation"]) <= 4
    assert monte_carlo.zscore(ch, mc["change_of_distribution"]) <= 4
    assert monte_carlo.zscore(float(T.latent_excess_risk(lam, q, L, strategy)), mc["total"]) <= 4
    if lam.min() == 0 and T.ppca(lam, q)[0] > 0 and strategy > 1:
        # x' gets noise off the support of Sigma*: the change part is +inf, the perturbation finite
        assert ch == math.inf and mc["change_of_distribution"]["mean"] == math.inf
        assert math.isfinite(pert)


def test_paper_change_of_distribution_form_is_rejected():
    """The paper's extra 1/2 log(prod Lambda^(j) / prod lambda) does not belong: Monte Carlo of
    E l(x') - E l(x) at Theta* agrees with the correct form and rejects the paper's."""
    mc = monte_carlo.mc_latent_excess(FULL, 2, 3.0, 3, 100_000, seed=1)["change_of_distribution"]
    correct = T.latent_excess_change(FULL, 2, 3)
    paper = T.latent_excess_change_paper(FULL, 2, 3)
    assert monte_carlo.zscore(correct, mc) <= 4
    assert monte_carlo.zscore(paper, mc) > 10
    # strategy 1, full-rank data: the paper's log term is -inf, the true change is finite
    mc1 = monte_carlo.mc_latent_excess(FULL, 2, 3.0, 1, 20_000, seed=2)["change_of_distribution"]
    assert T.latent_excess_change_paper(FULL, 2, 1) == -math.inf
    assert math.isfinite(mc1["mean"]) and monte_carlo.zscore(T.latent_excess_change(FULL, 2, 1), mc1) <= 4
    # rank-q data: the log term is 0 and both forms agree (the change part is 0)
    assert T.latent_excess_change_paper(RANKQ, 3, 1) == T.latent_excess_change(RANKQ, 3, 1) == 0.0


def test_paper_form_check_is_not_applicable_where_the_forms_coincide():
    """Rank-q data: the paper's log term is 0, so there is nothing to reject; where the forms differ
    the same check rejects the paper's."""
    name = "Thm 2: paper's change form rejected, strategy {j}"
    for j in (1, 2, 3):
        row = checks.check_row(name.format(j=j), T.Case("rank-q", RANKQ, 3, L=2.5))
        assert row["passed"] is None and "coincide" in row["note"]
    row = checks.check_row(name.format(j=1), T.Case("full", FULL, 2, L=3.0))  # paper's form: -inf
    assert row["passed"] is True and row["error"] > row["tolerance"]


def test_nan_in_monte_carlo_fails_the_check(monkeypatch):
    """A NaN (a defect) must fail a check: also where the closed form is +inf, which a NaN counted as
    +inf would match, and for a rejection (|z| above the tolerance)."""
    acc = monte_carlo.RunningMean()
    acc.add(np.array([1.0, 2.0]))
    acc.add(np.array([np.nan, 3.0]))
    assert math.isnan(acc.result()["mean"])
    for value in (math.inf, 1.5):
        z = monte_carlo.zscore(value, acc.result())
        assert not suite.passes("z", z, 4.0) and not suite.passes("z>", z, 4.0)
    both = monte_carlo.RunningMean()
    both.add(np.array([math.inf, -math.inf]))
    assert math.isnan(both.result()["mean"])
    # end to end: x' leaves the support of a singular Sigma*, where the loss is +inf; made NaN
    case, name = T.Case("singular noise", T.as_spectrum([4, 2, 1, 0]), 2), "Thm 2: change of distribution, strategy 2"
    assert checks.check_row(name, case)["passed"] is True
    real = gaussian.GaussianLoss.__call__
    monkeypatch.setattr(gaussian.GaussianLoss, "__call__",
                        lambda self, X: np.where(np.isinf(v := real(self, X)), np.nan, v))
    assert checks.check_row(name, case)["passed"] is False


def test_corollary3_exact_value_and_slope_minus_one():
    Ls = np.geomspace(10.0, 1e4, 9)
    for j in (1, 2, 3):
        np.testing.assert_allclose(T.latent_excess_risk(RANKQ, 3, Ls, j), T.corollary3(3, Ls), rtol=1e-12)
    # independent of the eigenvalues: only q matters
    other = T.as_spectrum([100.0, 0.01, 0.001, 0, 0, 0])
    np.testing.assert_allclose(T.latent_excess_risk(other, 3, Ls, 1), T.corollary3(3, Ls), rtol=1e-12)
    mcs = [monte_carlo.mc_latent_excess(RANKQ, 3, float(L), 1, 20_000, seed=i)["total"] for i, L in enumerate(Ls)]
    for L, m in zip(Ls, mcs):
        assert monte_carlo.zscore(float(T.corollary3(3, L)), m) <= 4
    slope_mc = np.polyfit(np.log(Ls), np.log([m["mean"] for m in mcs]), 1)[0]
    slope = np.polyfit(np.log(Ls), np.log(T.corollary3(3, Ls)), 1)[0]
    assert abs(slope + 1) < 0.05 and abs(slope_mc + 1) < 0.05  # q/L, not the paper's q/L^2


# --------------------------------------------------------------------------- Theorem 4


def test_theorem4_monte_carlo_bounds_and_rate():
    lam, Lp = FULL, 40.0
    val = float(T.original_excess_risk(lam, Lp))
    assert monte_carlo.zscore(val, monte_carlo.mc_original_excess(lam, Lp, 60_000, seed=3)) <= 4
    b = T.original_excess_bounds(lam, Lp)
    assert b["lower_bound"] <= val <= b["upper_bound"]
    # the paper's orders are off by a power: at large L' the value exceeds d (lam_min L')^-2
    big = 1e4
    v_big = float(T.original_excess_risk(lam, big))
    assert v_big > T.original_excess_bounds(lam, big)["paper_order_upper"] * 10
    Ls = np.geomspace(100.0, 1e5, 7)
    mcs = [monte_carlo.mc_original_excess(lam, float(L), 20_000, seed=i)["mean"] for i, L in enumerate(Ls)]
    assert abs(np.polyfit(np.log(Ls), np.log(mcs), 1)[0] + 1) < 0.05


def test_theorem4_is_infinite_off_the_manifold():
    assert T.original_excess_risk(RANKQ, 4.0) == math.inf
    # L' lam_min < 1: scipy's maximisation of the Lagrangian runs away, and the Lagrangian grows
    # without bound along the smallest-variance direction
    ub = solvers.lagrangian_unbounded([4.0, 2.0, 1.0, 0.2], 4.0)
    assert ub["optimizer_value"] > 1e4
    along = ub["along_min_direction"]
    assert all(b > a for a, b in zip(along, along[1:])) and along[-1] > 1e10
    # and the excess risk diverges as L' lam_min -> 1 from above (closed form and Monte Carlo)
    vals = []
    for x in (2.0, 1.2, 1.05):
        lam = T.as_spectrum([4.0, 2.0, 1.0, x / 4.0])
        v = float(T.original_excess_risk(lam, 4.0))
        assert monte_carlo.zscore(v, monte_carlo.mc_original_excess(lam, 4.0, 20_000, seed=int(100 * x))) <= 4
        vals.append(v)
    assert vals[0] < vals[1] < vals[2] and vals[2] > 100


def test_theorem4_monte_carlo_check_is_not_applicable_where_the_closed_form_is_infinite(monkeypatch):
    """Without a maximiser the estimator samples nothing (n = 0) and says +inf, the same condition
    as the closed form: verify's check is then not applicable, not a pass. It fails where only one
    side is infinite, and where a finite closed form is wrong."""
    assert monte_carlo.mc_original_excess(RANKQ, 4.0, 1000)["n"] == 0
    name, manifold, full = "Thm 4: excess risk (Monte Carlo)", T.Case("rank-q", RANKQ, 3), T.Case("full", FULL, 2, Lp=40.0)
    row = checks.check_row(name, manifold)
    assert row["passed"] is None and row["note"].startswith("not applicable")
    assert checks.check_row(name, full)["passed"] is True
    real = T.original_excess_risk
    for wrong in (lambda lam, Lp: math.inf, lambda lam, Lp: 1.1 * real(lam, Lp)):
        monkeypatch.setattr(checks, "original_excess_risk", wrong)
        assert checks.check_row(name, full)["passed"] is False
    monkeypatch.setattr(checks, "original_excess_risk", lambda lam, Lp: 1.0)  # finite where the sup is +inf
    assert checks.check_row(name, manifold)["passed"] is False


# --------------------------------------------------------------------------- Theorems 5, 6


def test_fixed_point_solutions_match_the_closed_forms():
    rng = np.random.default_rng(4)
    for _ in range(10):
        lam = T.as_spectrum(np.exp(rng.normal(0, 1.5, 6)))
        q = int(rng.integers(1, 6))
        for L in (1.05, 2.0, 30.0):  # near 1 plain fixed-point iteration would oscillate
            for j in (1, 2, 3):
                fl, fo = solvers.fixed_point_latent(lam, q, L, j), solvers.fixed_point_original(lam, L)
                assert fl["residual"] < 1e-10 and fo["residual"] < 1e-10
                np.testing.assert_allclose(fl["solution"], T.latent_saddle(lam, q, L, j), rtol=1e-10)
                np.testing.assert_allclose(fo["solution"], T.original_saddle(lam, L), rtol=1e-10)


@pytest.mark.parametrize("restrict", [True, False], ids=["eigenbasis", "any-Sigma"])
def test_theorem5_nested_min_max(restrict):
    lam = T.as_spectrum([4.0, 2.0, 1.0, 0.5, 0.3])
    for j in (1, 2, 3):
        bs = min_max.brute_saddle(lam, 2, 3.0, j, restrict=restrict, seed=j)
        th = T.latent_saddle(lam, 2, 3.0, j)
        assert np.max(np.abs(bs["in_data_basis"] - th)) / th.max() < 1e-6
        assert bs["off_diagonal"] < 1e-6  # the optimum over all covariances is aligned with U


def test_theorem6_nested_min_max_and_ilyas_matrix_form():
    lam = T.as_spectrum([4.0, 2.0, 1.0, 0.5, 0.3])
    for restrict in (True, False):
        bs = min_max.brute_saddle(lam, None, 3.0, restrict=restrict, seed=9)
        th = T.original_saddle(lam, 3.0)
        assert np.max(np.abs(bs["in_data_basis"] - th)) / th.max() < 1e-6
        assert bs["off_diagonal"] < 1e-6
    ily = min_max.ilyas_matrix_form(FULL, 2.5, seed=1)
    assert ily["max_rel_diff"] < 1e-10 and ily["matrix_fn_diff"] < 1e-10


def test_rank_q_latent_amplification_and_original_amplification_of_small_directions():
    L = 2.5
    bs = min_max.brute_saddle(RANKQ, 3, L, 1, restrict=False, seed=3)
    ratio = bs["in_data_basis"][:3] / RANKQ[:3]
    np.testing.assert_allclose(ratio, T.rank_q_latent_ratio(L), rtol=1e-6)
    assert np.all(ratio >= 1) and np.all(np.abs(bs["in_data_basis"][3:]) < 1e-9)
    r = min_max.brute_saddle(FULL, None, 3.0, restrict=True, seed=4)["in_data_basis"] / FULL
    assert np.all(np.diff(r) > 0)  # ratio grows as lambda shrinks


# --------------------------------------------------------------------------- Appendix C


def test_theorem8_against_scipy():
    lam = T.as_spectrum([4.0, 2.0, 1.0, 0.5, 0.2])
    for n, m in ((30, 300), (200, 50)):
        chk = min_max.augmentation_check(lam, 2, n, m, seed=n)
        ref = T.augmentation(chk["sample_eigenvalues"], 2, n, m)
        np.testing.assert_allclose(chk["numerical"], ref, rtol=1e-6)
        assert chk["mean_error"] < 1e-6
        np.testing.assert_allclose(ref[:2], chk["sample_eigenvalues"][:2])  # top q untouched


def test_simulation_lands_on_theorems_6_and_5_fast():
    lam = T.as_spectrum([5, 4, 3, 2, 1.5, 1, 0.75, 0.5])
    t0 = time.perf_counter()
    sim = T.simulate(lam, 3, 4.0, 4.0, 1, seed=0)  # the defaults: 100000 samples
    wall = time.perf_counter() - t0
    assert wall < 60
    assert sim["original"]["rel_error"].max() < 0.03 and sim["latent"]["rel_error"].max() < 0.03
    # what the optimisation converges to: the theorems at the sample's own second moments
    assert sim["original"]["rel_error_at_sample"].max() < 1e-6
    assert sim["latent"]["rel_error_at_sample"].max() < 1e-6
    assert sim["original"]["mean_error"] < 0.05 and sim["latent"]["mean_error"] < 0.05
    ratio = sim["original"]["learned"] / lam
    assert np.all(np.diff(ratio) > 0)  # original-space training amplifies the small-variance directions


def test_simulation_error_shrinks_with_samples():
    lam = T.as_spectrum([5, 4, 3, 2, 1.5, 1, 0.75, 0.5])
    small = T.simulate(lam, 3, 4.0, 4.0, 3, samples=3_000, seed=1)
    large = T.simulate(lam, 3, 4.0, 4.0, 3, samples=96_000, seed=1)
    for part in ("original", "latent"):
        assert large[part]["rel_error"].mean() < small[part]["rel_error"].mean()


def test_simulation_with_gradient_ascent_inner_loop_matches():
    lam = T.as_spectrum([4.0, 2.0, 1.0, 0.5])
    sim = T.simulate(lam, 2, 4.0, 4.0, 2, samples=5_000, inner="ascent", inner_steps=5, seed=2)
    assert sim["original"]["rel_error_at_sample"].max() < 1e-6
    assert sim["latent"]["rel_error_at_sample"].max() < 1e-6


def test_theorem9_finite_sample_generator():
    lam = T.as_spectrum([5, 4, 3, 2, 1.5, 1, 0.75, 0.5])
    sim = T.simulate(lam, 3, 4.0, 4.0, 3, samples=100_000, n_fit=200, seed=0)
    e9 = sim["latent"]["rel_error_theorem9"].max()
    assert e9 < 0.03
    assert sim["latent"]["rel_error"].max() > 3 * e9  # the population's Theorem 5 is not what it learns
    with pytest.raises(UsageError):
        T.simulate(lam, 3, 4.0, 4.0, 1, n_fit=200)


def test_simulation_on_manifold_data_puts_one_over_L_off_the_manifold():
    """lam_i = 0: the original-space optimum sits on the domain boundary 1/L' (Theorem 6 gives
    1/L' there); strategy 1 leaves no data off span(W), so the latent eigenvalue there is 0."""
    lam = T.as_spectrum([4.0, 2.0, 1.0, 0.0, 0.0])
    for j in (1, 3):
        sim = T.simulate(lam, 2, 4.0, 4.0, j, samples=20_000, seed=3)
        np.testing.assert_allclose(sim["original"]["learned"][3:], 0.25, rtol=1e-6)
        assert sim["original"]["rel_error_at_sample"].max() < 1e-6
        assert sim["latent"]["rel_error_at_sample"].max() < 1e-6
        if j == 1:
            assert np.all(sim["latent"]["learned"][2:] == 0.0)
