"""`manifoldadv theory ...` through typer's CliRunner: one JSON document with --json, one error
line with exit 2 on bad input, the numbers agreeing with independent computations."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from manifoldadv import theory as T
from manifoldadv.theory import reports
from manifoldadv.cli import app

runner = CliRunner()


def run_json(*args):
    r = runner.invoke(app, ["theory", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def assert_usage_error(*args, match=None):
    r = runner.invoke(app, ["theory", *args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    if match:
        assert match in lines[0]


def test_theory_is_registered_not_a_placeholder():
    r = runner.invoke(app, ["theory", "--help"])
    assert r.exit_code == 0
    for sub in ("strategies", "excess-risk", "saddle-point", "rates", "augmentation", "simulate", "verify", "plot"):
        assert sub in r.stdout
    assert "not implemented" not in r.stdout


def test_strategies_json():
    out = run_json("strategies", "--eigenvalues", "4,2,1,0.5", "--q", "2", "--samples", "40000")
    assert out["coincide_2_3"] is True and out["rank_q"] is False
    np.testing.assert_allclose(out["strategies"]["1"], T.strategy_spectrum([4, 2, 1, 0.5], 2, 1))
    for j in ("1", "2", "3"):
        assert out["monte_carlo"][j]["max_z"] <= out["monte_carlo"][j]["z_threshold"]
    rq = run_json("strategies", "--eigenvalues", "3,1,0,0", "--q", "2", "--samples", "0")
    assert rq["rank_q"] is True and rq["all_equal_eigenvalues"] is True and rq["monte_carlo"] is None


def test_excess_risk_json_shape_and_monte_carlo():
    out = run_json("excess-risk", "--eigenvalues", "3,2.5,1,0.4,0.2,0.1", "--q", "2", "--L", "3", "--L-orig",
                   "20", "--strategy", "3", "--samples", "60000")
    lat, org = out["latent"], out["original"]
    for key in ("perturbation", "change_of_distribution", "change_of_distribution_paper", "total", "monte_carlo"):
        assert key in lat
    assert set(lat["monte_carlo"]) == {"mean", "stderr", "n"} and lat["monte_carlo"]["n"] == 60000
    for key in ("value", "lower_bound", "upper_bound", "monte_carlo"):
        assert key in org
    assert abs(lat["total"] - lat["monte_carlo"]["mean"]) <= 4 * lat["monte_carlo"]["stderr"]
    assert abs(org["value"] - org["monte_carlo"]["mean"]) <= 4 * org["monte_carlo"]["stderr"]
    assert lat["z"]["change_of_distribution_paper"] > 10  # the paper's form is rejected
    assert org["lower_bound"] <= org["value"] <= org["upper_bound"]
    off = run_json("excess-risk", "--samples", "0")
    assert off["latent"]["monte_carlo"] is None and off["original"]["monte_carlo"] is None


def test_excess_risk_infinite_theorem4_is_null_in_json():
    out = run_json("excess-risk", "--eigenvalues", "5,3,2,0,0,0", "--q", "3", "--samples", "5000")
    assert out["original"]["value"] is None  # +inf: JSON has no infinity
    assert out["latent"]["change_of_distribution"] == 0.0
    assert out["latent"]["total"] == pytest.approx(float(T.corollary3(3, 4.0)), rel=1e-12)


def test_saddle_point_json():
    out = run_json("saddle-point", "--eigenvalues", "4,2,1,0.5", "--q", "2", "--L", "1.2", "--L-orig", "3",
                   "--strategy", "2")
    assert {"eigenvalues", "latent", "original", "latent_ratio", "original_ratio", "fixed_point_residual"} <= set(out)
    assert out["fixed_point_residual"] < 1e-10
    lam = np.array(out["eigenvalues"])
    np.testing.assert_allclose(out["fixed_point"]["latent"], out["latent"], rtol=1e-10)
    np.testing.assert_allclose(np.array(out["original"]) / lam, out["original_ratio"])
    assert out["rank_q_ratio"] == pytest.approx(0.5 + 1 / 1.2 + math.sqrt(0.25 + 1 / 1.2))


def test_rates_slopes_near_minus_one():
    out = run_json("rates", "--eigenvalues", "4,2,1,0.5", "--q", "2", "--samples", "8000", "--points", "6")
    for key in ("corollary3", "theorem4"):
        assert abs(out[key]["slope"] + 1) < 0.1
        assert abs(out[key]["slope_monte_carlo"] + 1) < 0.1
        assert out[key]["max_z"] <= 4
        assert out["paper_claim"][key] == -2
    assert out["expected_slope"] == -1
    assert out["corollary3"]["max_rel_diff"] < 1e-12
    manifold = run_json("rates", "--eigenvalues", "4,2,0", "--q", "2", "--samples", "0")
    assert manifold["theorem4"]["slope"] is None and manifold["corollary3"]["slope"] is not None


def test_augmentation_json():
    out = run_json("augmentation", "--eigenvalues", "4,2,1,0.5,0.2", "--q", "2", "--n", "40", "--m", "400")
    assert out["max_rel_error_numerical"] < 1e-6
    np.testing.assert_allclose(out["augmented"], T.augmentation(out["sample_eigenvalues"], 2, 40, 400))


def test_simulate_json_default_within_three_percent():
    out = run_json("simulate")
    assert out["d"] == 8 and out["q"] == 3 and out["samples"] == 100_000
    assert out["max_rel_error"]["original"] < 0.03 and out["max_rel_error"]["latent"] < 0.03
    assert out["wall_s"] < 60


def test_verify_passes(monkeypatch):
    # Two of the four default spectra (full rank, rank q) keep the test short; every kind of check
    # still runs. `manifoldadv theory verify` itself runs all four.
    cases = T.default_cases(0)
    monkeypatch.setattr(T, "default_cases", lambda seed=0: [cases[0], cases[2]])
    out = runner.invoke(app, ["theory", "verify", "--samples", "30000", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["passed"] is True and doc["n_failed"] == 0 and doc["n_checks"] > 60
    names = " ".join(r["check"] for r in doc["checks"])
    for needle in ("Lemma 1", "Thm 2", "paper's change form", "Cor 3", "Thm 4", "Thm 5", "Thm 6", "Ilyas",
                   "Thm 8", "Thm 9", "Simulation", "random non-diagonal"):
        assert needle in names
    # rank-q data: Theorem 4 is infinite and the paper's form coincides with ours; nothing to compare
    na = {(r["check"], r["case"]) for r in doc["checks"] if r["passed"] is None}
    assert ("Thm 4: excess risk (Monte Carlo)", "rank-3 d=6") in na
    assert {c for c, case in na} == {"Thm 4: excess risk (Monte Carlo)"} | {
        f"Thm 2: paper's change form rejected, strategy {j}" for j in (1, 2, 3)}
    assert all(r["passed"] is True for r in doc["checks"] if r["case"] == "toy 4,2,1,0.5")


def test_verify_exits_nonzero_on_a_failed_check(monkeypatch):
    def fake_verify(cases, **kw):
        return [{"check": "x", "case": "y", "error": 1.0, "tolerance": 0.1, "kind": "rel", "passed": False, "note": ""}]

    monkeypatch.setattr(reports, "verify", fake_verify)
    r = runner.invoke(app, ["theory", "verify", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)["passed"] is False


def test_verify_shows_not_applicable_apart_from_pass_and_fail(monkeypatch):
    rows = [{"check": "a", "case": "y", "error": 0.1, "tolerance": 4.0, "kind": "z", "passed": True, "note": ""},
            {"check": "b", "case": "y", "error": float("nan"), "tolerance": 4.0, "kind": "z", "passed": None,
             "note": "not applicable: nothing to compare"}]
    monkeypatch.setattr(reports, "verify", lambda cases, **kw: rows)
    r = runner.invoke(app, ["theory", "verify"])
    assert r.exit_code == 0, r.output
    assert "n/a" in r.stdout and "1/2 checks passed, 1 not applicable, 0 failed" in r.stdout
    doc = run_json("verify")
    assert doc["passed"] is True and doc["n_failed"] == 0 and doc["checks"][1]["passed"] is None


def test_device_cuda_is_refused_auto_and_cpu_accepted():
    for sub in ("strategies", "excess-risk", "saddle-point", "rates", "augmentation", "simulate", "verify"):
        assert_usage_error(sub, "--device", "cuda", match="--device cuda")
    assert_usage_error("plot", "x.png", "--device", "cuda", match="CPU")
    for device in ("auto", "cpu"):
        assert run_json("saddle-point", "--device", device)["L"] == 4.0


def test_plot_writes_a_png_atomically(tmp_path):
    path = tmp_path / "sub" / "theory.png"
    r = runner.invoke(app, ["theory", "plot", str(path), "--spectrum", "powerlaw", "--d", "50", "--q", "5"])
    assert r.exit_code == 0, r.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["theory.png"]  # no temporary left behind
    assert_usage_error("plot", str(tmp_path / "x.txt"), match=".png")


def test_spectrum_sources(tmp_path):
    lam = np.array([0.5, 3.0, 1.0])
    np.save(tmp_path / "eig.npy", lam)
    out = run_json("saddle-point", "--spectrum", str(tmp_path / "eig.npy"), "--q", "1")
    assert out["eigenvalues"] == [3.0, 1.0, 0.5]
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    np.save(tmp_path / "cov.npy", A @ A.T)
    out = run_json("saddle-point", "--spectrum", str(tmp_path / "cov.npy"), "--q", "2")
    np.testing.assert_allclose(out["eigenvalues"], np.sort(np.linalg.eigvalsh(A @ A.T))[::-1], rtol=1e-10)
    out = run_json("saddle-point", "--spectrum", "powerlaw", "--d", "20", "--alpha", "2")
    np.testing.assert_allclose(out["eigenvalues"], np.arange(1, 21) ** -2.0)


def test_bad_input_is_one_error_line_exit_2(tmp_path):
    assert_usage_error("saddle-point", "--eigenvalues", "1,-2", match=">= 0")
    assert_usage_error("saddle-point", "--eigenvalues", "1,x")
    assert_usage_error("saddle-point", "--eigenvalues", "1,2", "--spectrum", "powerlaw", match="not both")
    assert_usage_error("saddle-point", "--d", "10", match="powerlaw")
    assert_usage_error("saddle-point", "--eigenvalues", "1,2", "--q", "3", match="q must be")
    assert_usage_error("saddle-point", "--eigenvalues", "2,1,0,0", "--q", "3", match="rank")
    assert_usage_error("saddle-point", "--strategy", "4")
    assert_usage_error("saddle-point", "--L", "-1")
    assert_usage_error("saddle-point", "--spectrum", str(tmp_path / "missing.npy"), match="no such file")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    assert_usage_error("saddle-point", "--spectrum", str(tmp_path / "junk.npy"))
    np.save(tmp_path / "asym.npy", np.array([[1.0, 2.0], [0.0, 1.0]]))
    assert_usage_error("saddle-point", "--spectrum", str(tmp_path / "asym.npy"), match="symmetric")
    assert_usage_error("saddle-point", "--spectrum", "mnist:12")
    assert_usage_error("saddle-point", "--spectrum", "banana")
    assert_usage_error("rates", "--L-min", "1")
    assert_usage_error("simulate", "--n-fit", "50", "--strategy", "1", match="strategy 3")


def test_missing_mnist_is_a_usage_error(tmp_path):
    assert_usage_error("saddle-point", "--spectrum", "mnist:3", "--data-root", str(tmp_path), match="not found")


@pytest.mark.mnist
def test_mnist_class_spectrum(mnist_root):
    """Class 3 of the real MNIST training set through the covariance op, against numpy's cov."""
    from manifoldadv.data import load_dataset

    out = run_json("excess-risk", "--spectrum", "mnist:3", "--data-root", str(mnist_root), "--q", "10",
                   "--samples", "0")
    ds = load_dataset("mnist", mnist_root)
    x = ds.train.images()[ds.train.y == 3].reshape(-1, 784).double().numpy()
    ref = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    lam = T.as_spectrum(ref)
    sp = out["spectrum"]
    assert sp["d"] == 784 and sp["rank"] == int(np.sum(lam > 0)) and 0 < sp["rank"] < 784
    assert sp["lambda_max"] == pytest.approx(ref[0], rel=1e-9)
    assert sp["sigma2"] == pytest.approx(T.ppca(lam, 10)[0], rel=1e-9)
    assert out["original"]["value"] is None  # constant border pixels: lam_min = 0, Theorem 4 infinite
    assert out["latent"]["perturbation"] == pytest.approx(float(T.latent_excess_perturbation(lam, 10, 4.0, 1)),
                                                          rel=1e-8)
