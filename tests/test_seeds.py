"""Error bars (study/seeds.py), the study's seeds and generator, and the claims (study/claims.py)."""

import math
import shutil
import statistics

import pytest

from manifoldadv import checkpoint, config
from manifoldadv.errors import UsageError
from manifoldadv.study import claims, paper, seeds, tables

SAMPLES = [(0, 0, 0.90), (0, 1, 0.92), (0, 2, 0.91), (1, 0, 0.80), (1, 1, 0.84), (1, 2, 0.82)]


def test_a_cell_is_the_mean_and_spread_of_its_samples():
    c = seeds.summarize(SAMPLES)
    values = [v for _, _, v in SAMPLES]
    # statistics works in exact fractions: an independent reference
    assert c["mean"] == pytest.approx(statistics.fmean(values), abs=1e-15)
    assert c["std"] == pytest.approx(statistics.stdev(values), abs=1e-15)
    assert c["train_std"] == pytest.approx(statistics.stdev([0.91, 0.82]), abs=1e-15)
    pooled = (statistics.variance([0.90, 0.92, 0.91]) + statistics.variance([0.80, 0.84, 0.82])) / 2
    assert c["eval_std"] == pytest.approx(math.sqrt(pooled), abs=1e-15)
    assert (c["n"], c["min"], c["max"], c["train_seeds"], c["eval_seeds"]) == (6, 0.80, 0.92, [0, 1], [0, 1, 2])
    one = seeds.summarize([(0, 0, 0.5)])
    assert (one["std"], one["train_std"], one["eval_std"], one["n"]) == (0.0, None, None, 1)


def test_a_cell_stands_against_the_paper_within_spread_5pp_or_off():
    c = seeds.summarize([(0, 0, 0.89), (0, 1, 0.90), (0, 2, 0.91)])  # mean 0.90, std 0.01
    assert seeds.against(c, 0.915) == "spread"  # 1.5 std away
    assert seeds.against(c, 0.925) == "close"  # 2.5 std, 2.5 pp
    assert seeds.against(c, 0.95) == "close"  # exactly 5 pp
    assert seeds.against(c, 0.951) == "off"
    assert seeds.against(c, None) is None
    # one measurement has no spread: even an exact match is only "within 5 pp"
    assert seeds.against(seeds.summarize([(0, 0, 0.9)]), 0.9) == "close"
    assert tables.seeded(0.9, 0.915, c) == "90.00% ± 1.00 (91.50%; within spread)"
    assert tables.seeded(0.9, None) == "90.00%"


def test_seed_lists_are_parsed_or_refused():
    assert seeds.parse("0,1,1,2") == (0, 1, 2) and seeds.parse(None) == () and seeds.parse("") == ()
    for bad in ("a", "1,-2", "0.5"):
        with pytest.raises(UsageError):
            seeds.parse(bad)


def test_the_latent_budget_keeps_the_l2_step_across_latent_sizes():
    assert config.latent_eps("mnist") == config.latent_eps("mnist", 10) == 1.0
    assert config.latent_eps("mnist", 40) == pytest.approx(0.5, abs=1e-15)
    for latent in (5, 10, 32, 40):  # eps * sqrt(latent): the same for every size
        assert config.latent_eps("mnist", latent) * math.sqrt(latent) == pytest.approx(math.sqrt(10), rel=1e-15)
    assert config.latent_eps("cifar10", 128) == 0.1


def test_the_study_trains_and_attacks_with_the_generator_it_is_given(tmp_path):
    from manifoldadv.study import Study

    s = Study("mnist", tmp_path / "run", "cpu", generator="cvae-gauss", autoattack=False)
    assert s.path("cvae").name == "mnist-cvae-gauss.safetensors"
    assert s.budgets == {"latent": pytest.approx(math.sqrt(10 / 32))}
    assert s.config("cvae", None).model == "cvae-gauss"
    s.path("cvae").parent.mkdir(parents=True)
    s.path("cvae").write_bytes(b"stands in for the CVAE: the config records its digest")
    (vae,) = s.config("vae", None).attacks
    assert vae["eps"] == pytest.approx(math.sqrt(10 / 32)) and vae["space"] == "latent"
    assert s.config("joint", None).attacks[1]["eps"] == pytest.approx(math.sqrt(10 / 32))
    default = Study("mnist", tmp_path / "run2", "cpu", autoattack=False)
    assert default.generator == "cvae-mlp" and default.path("cvae").name == "mnist-cvae.safetensors"
    assert default.budgets == {"latent": 1.0}
    with pytest.raises(UsageError, match="CVAE model"):
        Study("mnist", tmp_path / "run3", "cpu", generator="lenet5", autoattack=False)


@pytest.mark.slow
def test_identical_seeds_give_identical_cells_and_training_seeds_replicate(tmp_path):
    from manifoldadv.data import load_dataset
    from manifoldadv.study import Study

    ds = load_dataset("synthetic", limit=60)
    opts = dict(quick=True, autoattack=False, eval_seeds=(0, 1), train_seeds=(1,), seeded_modes=("std",))
    a = Study("synthetic", tmp_path / "a", "cpu", **opts)
    pgd, fgsm = a.cell("std", "pgd", ds), a.cell("std", "fgsm", ds)
    # a random attack: every (training seed, evaluation seed); a deterministic one: once per model
    assert [v[:2] for v in pgd["values"]] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert [v[:2] for v in fgsm["values"]] == [[0, 0], [1, 0]]
    assert [r.seed for r in a.replicates("std")] == [0, 1] and [r.seed for r in a.replicates("pgd")] == [0]
    rep = checkpoint.load(tmp_path / "a" / "seeds" / "seed-1" / "synthetic-std.safetensors").meta
    main = checkpoint.load(a.path("std")).meta
    assert rep["hparams"]["seed"] == 1 and main["hparams"]["seed"] == 0
    # another run folder with the same checkpoints recomputes every evaluation: the same cell
    b_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b_dir, ignore=shutil.ignore_patterns("results"))
    b = Study("synthetic", b_dir, "cpu", **opts)
    assert b.cell("std", "pgd", ds) == pgd and b.cell("std", "fgsm", ds) == fgsm
    assert not (tmp_path / "a" / "results" / "evals.json").samefile(b_dir / "results" / "evals.json")
    rows = [r for r in b.cache("evals").entries().values() if r["attack"] == "pgd"]
    assert sorted((r["train_seed"], r["eval_seed"]) for r in rows) == [(0, 0), (0, 1)]  # seed 1's in its folder


@pytest.mark.slow
def test_a_replicate_trained_only_with_vae_gives_its_vae_robust_spectrum(tmp_path):
    from manifoldadv.data import load_dataset
    from manifoldadv.study import Study, reproduce

    ds = load_dataset("synthetic", limit=60)
    study = Study("synthetic", tmp_path, "cpu", quick=True, autoattack=False, train_seeds=(1,), seeded_modes=("vae",))
    study.replicate(1).ensure_trained("vae", ds)
    reps = reproduce.replicate_spectra(study, ds, top=6)
    assert list(reps) == ["1"]
    sets = {x["set"].split(" / ")[0] for x in reps["1"]}
    assert sets == {"vae-adv", "reconstruction"} and {x["reference"] for x in reps["1"]} >= {"clean"}
    assert all(x["top_ratio"] > 0 and x["tail_ratio"] > 0 for x in reps["1"])


PAPER_RESULTS = {"data": "mnist", "seed": 0, "table1": paper.table1("mnist"),
                 "tradeoff": {"drops": tables.drops(paper.table2("mnist"))}}


def test_the_papers_own_numbers_uphold_its_table_claims():
    rows = claims.claims(PAPER_RESULTS)
    assert [r["verdict"] for r in rows] == ["holds"] * 4, rows


def test_claims_fail_on_numbers_that_contradict_them():
    t1 = {a: dict(row) for a, row in paper.table1("mnist").items()}
    t1["vae"]["std"], t1["pgd"]["std"] = 0.02, 0.30  # regular examples harder to find than on-manifold ones
    t1["vae"]["pgd"] = t1["vae"]["std"]  # PGD-adv no better than std against the VAE-attack
    t1["pgd"]["vae"] = 0.90  # VAE-adv robust to PGD
    t2 = {k: {r: dict(v) for r, v in half.items()} for k, half in paper.table2("mnist").items()}
    t2["gen"]["pgd"]["joint"], t2["gen"]["vae"]["joint"] = 0.50, 0.50  # a large regular/generative conflict
    r = {"data": "mnist", "seed": 0, "table1": t1, "tradeoff": {"drops": tables.drops(t2)}}
    verdicts = [c["verdict"] for c in claims.claims(r)]
    assert verdicts == ["partly", "partly", "does not hold", "does not hold"], verdicts


def test_a_claim_reads_its_spread_from_the_cells():
    r = {**PAPER_RESULTS, "table1": {a: dict(row) for a, row in paper.table1("mnist").items()}}
    r["table1"]["vae"]["pgd"] = 0.44  # 1.6 pp above std's 42.4%: decided by the spread
    r["cells"] = []
    assert claims.table1_claims(r)[2]["verdict"] == "holds"
    r["cells"] = [{"attack": "vae", "mode": m, **seeds.summarize([(0, 0, v - 0.02), (1, 0, v + 0.02)])}
                  for m, v in (("std", 0.424), ("pgd", 0.44))]
    assert claims.table1_claims(r)[2]["verdict"] == "does not hold"


def test_known_differences_name_the_settings_that_differ():
    r = {"data": "mnist", "quick": False, "train_steps_override": 5,
         "models": {"pgd": {"hparams": {"attacks": [{"steps": 5, "space": "input"}]}},
                    "fgsm": {"hparams": {"attacks": [{"steps": 1, "space": "input"}]}}},
         "generator": {"model": "cvae-gauss", "model_kwargs": {"latent": 32}, "latent_eps": 0.559}}
    assert claims.why(r, "pgd", "pgd") == ["adversarial training with PGD-5, not the paper's PGD-40"]
    assert claims.why(r, "pgd", "fgsm") == [claims.KNOWN[("pgd", "fgsm")]]
    (gen,) = claims.why(r, "vae", "std")
    assert "cvae-gauss (latent 32, eps 0.559)" in gen and "cvae-mlp, latent 10, eps 1" in gen
    assert claims.why(r, "fgsm", "std") == []


def test_train_and_attack_size_the_latent_budget_to_the_cvae_they_are_given(tmp_path):
    from helpers import cli_json

    small = ["--data", "synthetic", "--limit", "60", "--epochs", "1"]
    cvae = tmp_path / "cvae12.safetensors"
    cli_json("train", *small, "--mode", "cvae", "--latent", "24", "--out", cvae)
    clf = tmp_path / "vae.safetensors"
    doc = cli_json("train", *small, "--mode", "vae", "--adv-start", "0", "--cvae", cvae, "--out", clf)
    (spec,) = doc["hparams"]["attacks"]
    assert spec["eps"] == pytest.approx(config.latent_eps("synthetic", 24)) == pytest.approx(0.5)
    rows = cli_json("attack", clf, "--attacks", "vae", "--cvae", cvae, "--limit", "20")["results"]
    assert rows[0]["eps"] == pytest.approx(0.5)
    given = cli_json("attack", clf, "--attacks", "vae", "--cvae", cvae, "--limit", "20", "--latent-eps", "0.3")
    assert given["results"][0]["eps"] == 0.3  # an explicit budget is kept
    # the audit's latent check uses the same budget
    from manifoldadv.data import load_dataset
    from manifoldadv.evaluation.audit import Auditor

    ds = load_dataset("synthetic", limit=20)
    model, _ = checkpoint.load_model(clf, kind="classifier")
    g, _ = checkpoint.load_model(cvae, kind="cvae")
    check = Auditor(model, ds.test.images(), ds.test.y, "synthetic", cvae=g).latent_distortion()
    assert "latent linf eps 0.5 " in check.detail


def _spectra(pgd: tuple, vae: tuple, classes: int = 10) -> list[dict]:
    """A spectra summary whose every class has these (top, tail) ratios against the clean set."""
    return [{"set": name, "reference": "clean", "class": c, "top_ratio": top, "tail_ratio": tail}
            for name, (top, tail) in (("pgd-adv / pgd", pgd), ("vae-adv / vae", vae)) for c in range(classes)]


def test_figure_2_claims_read_the_ratios_and_their_spread_over_training_seeds():
    r = {"spectra": {"top": 30, "summary": _spectra((0.9, 8.0), (1.2, 0.95)),
                     "replicates": {"1": _spectra((0.8, 6.0), (1.0, 0.9))}}}
    pgd, vae = claims.spectra_claims(r)
    assert pgd["verdict"] == "holds" and vae["verdict"] == "holds"  # VAE: mean top ratio 1.1 > 1
    assert f"tail ratio 7 ± {statistics.stdev([8.0, 6.0]):.2g} over 2 training seeds" in pgd["evidence"]
    r["spectra"]["summary"] = _spectra((1.1, 0.9), (0.9, 1.5))  # each set moves the other way
    r["spectra"]["replicates"] = {}
    assert [c["verdict"] for c in claims.spectra_claims(r)] == ["does not hold", "does not hold"]
    r["spectra"]["summary"] = _spectra((1.1, 8.0), (1.2, 1.5))  # both lift both
    assert [c["verdict"] for c in claims.spectra_claims(r)] == ["partly", "partly"]


def test_the_eigenspace_table_says_which_evaluation_seed_each_row_is():
    from manifoldadv.study import report

    row = {"mode": "std", "attack": "eigen", "name": "eigen", "norm": "l2", "eps": 1.0, "steps": 10, "step_size": 0.5,
           "space": "input", "subspace": "on", "accuracy": 0.88, "subspace_share": 0.98, "box_kept": 0.96}
    basis = {"k": 100, "explained_mean": 0.935, "explained_min": 0.92}
    two = "\n".join(report.eigen_md({"evaluations": [{**row, "eval_seed": 0}, {**row, "eval_seed": 1, "accuracy": 0.87}],
                                     "eigenbasis": basis}))
    assert "(evaluation seed 0)" in two and "(evaluation seed 1) | eigen" in two and "87.00%" in two
    one = "\n".join(report.eigen_md({"evaluations": [{**row, "eval_seed": 0}], "eigenbasis": basis}))
    assert "evaluation seed" not in one and "| Std training | eigen" in one
