"""`profile`, the eigen-adv mode and the eigen-robust spectrum, end to end on tiny synthetic runs."""

from __future__ import annotations

import pytest

from manifoldadv import checkpoint
from manifoldadv.evaluation.spectrum import auto_attack

from helpers import assert_usage_error, cli, cli_json

SYN = ["--limit", "300", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile")
    cli_json("train", "--data", "synthetic", *SYN, "--mode", "std", "--epochs", "1", "--out", d / "std.safetensors")
    cli_json("train", "--data", "synthetic", *SYN, "--mode", "eigen", "--epochs", "2", "--adv-start", "1",
             "--out", d / "eigen.safetensors")
    return d


def test_eigen_mode_records_its_basis_and_refuses_another_on_resume(models, tmp_path):
    meta = checkpoint.load(models / "eigen.safetensors").meta
    hp = meta["hparams"]
    assert hp["eigen_k"] == 6 and len(hp["basis_digest"]) == 16
    assert [a["name"] for a in hp["attacks"]] == ["eigen"] and hp["eps_warmup"] == 0
    assert (models / f"synthetic-eigenbasis-k6-{hp['basis_digest']}.safetensors").exists()
    # the same run with another k is another training: refused, not resumed
    r = cli("train", "--data", "synthetic", *SYN, "--mode", "eigen", "--epochs", "2", "--adv-start", "1", "--k", "5",
            "--out", models / "eigen.safetensors", "--resume")
    assert_usage_error(r, "eigen_k")


def test_profile_cells_are_the_attack_commands_numbers(models, tmp_path):
    """Each point of a curve is what `attack` measures for that attack at that budget (same seed);
    'more fooled by' names the lower of on and off; one PNG per model."""
    doc = cli_json("profile", models / "std.safetensors", models / "eigen.safetensors", *SYN, "--eps-grid", "2,1",
                   "--steps", "3", "--plot-dir", tmp_path / "figs", "--seed", "3")
    assert doc["eps_grid"] == [1.0, 2.0] and doc["eigenbasis"]["k"] == 6 and doc["n"] == 300
    # what made it: versions (the commit among them), each model's SHA-256, the test split's digest
    assert "commit" in doc["versions"] and len(doc["test_digest"]) == 16
    assert [m["sha256"] for m in doc["models"]] == [checkpoint.digest(models / f) for f in ("std.safetensors",
                                                                                             "eigen.safetensors")]
    for model in doc["models"]:
        for i, eps in enumerate(doc["eps_grid"]):
            att = cli_json("attack", model["checkpoint"], "--attacks", "eigen,eigen-off-l2,l2", "--eigen-eps", eps,
                           "--l2-eps", eps, "--steps", "3", *SYN, "--seed", "3")
            got = {r["attack"]: r["accuracy"] for r in att["results"]}
            assert {n: model["curves"][n][i] for n in got} == got
            on, off = got["eigen"], got["eigen-off-l2"]
            se = ((on * (1 - on) + off * (1 - off)) / doc["n"]) ** 0.5
            assert model["difference_se"][i] == pytest.approx(se, rel=1e-12)
            want = "neither" if abs(on - off) <= 2 * se else "on" if on < off else "off"
            assert model["more_fooled_by"][i] == want
        assert (tmp_path / "figs" / f"{model['mode']}-profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rows = [r for r in model["rows"] if r["attack"] == "eigen"]
        assert [r["eps"] for r in rows] == [1.0, 2.0] and all("subspace_share" in r for r in rows)


def test_profile_bad_grid_is_one_line(models):
    assert_usage_error(cli("profile", models / "std.safetensors", *SYN, "--eps-grid", "1,x"), "--eps-grid")
    assert_usage_error(cli("profile", models / "std.safetensors", *SYN, "--eps-grid", "0,1"), "--eps-grid")


@pytest.mark.parametrize("mode,attack", [("std", "pgd"), ("pgd", "pgd"), ("fgsm", "pgd"), ("l1", "pgd"), ("joint", "pgd"), ("vae", "vae"),
                                         ("eigen", "eigen"), ("joint-eigen", "pgd"), (None, "pgd")])
def test_each_model_is_attacked_as_it_was_trained(mode, attack):
    assert auto_attack({"mode": mode}) == attack


def test_spectrum_of_the_eigen_robust_set(models):
    """The eigen-adv model's robust set comes from the eigenspace attack, and all of its
    perturbation lies in the class's top directions (the synthetic manifold has rank 6: the clean
    top 6 are its eigenspace)."""
    doc = cli_json("spectrum", models / "eigen.safetensors", "--classes", "0,1", *SYN[:2], "--device", "cpu")
    sets = {s["name"] for s in doc["sets"]}
    assert "eigen-adv / eigen" in sets
    energy = [r["top_energy"] for r in doc["summary"] if r["set"] == "eigen-adv / eigen"]
    assert energy and min(energy) > 0.99


def test_verdict_needs_two_standard_errors():
    from manifoldadv.evaluation.profile import verdict

    # 1000 examples at 90%: the standard error of the difference is about 1.3 pp
    assert verdict(0.88, 0.90, 1000) == "neither" and verdict(0.86, 0.90, 1000) == "on"
    assert verdict(0.90, 0.86, 1000) == "off" and verdict(0.5, 0.5, 10) == "neither"
