"""`reproduce` and `tradeoff` end to end on tiny synthetic runs, and resumption after a kill."""

import inspect
import json

import pytest

from manifoldadv import checkpoint
from manifoldadv.training import loop as training  # the loop module: hooks replace its functions

from helpers import assert_usage_error, cli, cli_json

TINY = ["--data", "synthetic", "--quick", "--limit", "120", "--no-theory", "--no-autoattack", "--no-audit"]


@pytest.mark.slow
def test_reproduce_tiny_writes_report_results_and_figures(tmp_path):
    run = tmp_path / "run"
    with_checks = [a for a in TINY if a not in ("--no-autoattack", "--no-audit")] + ["--autoattack", "--audit"]
    doc = cli_json("reproduce", *with_checks, "--train-steps", "2", "--run-dir", run)
    results = json.loads((run / "results.json").read_text())
    for mode in ("pgd", "l1", "joint-lp", "joint", "joint-eigen"):
        assert {a["steps"] for a in results["models"][mode]["hparams"]["attacks"]
                if a["space"] == "input" and "subspace" not in a} == {2}
    # --train-steps is PGD's: the eigenspace attack keeps its own 10 steps
    assert [a["steps"] for a in results["models"]["eigen"]["hparams"]["attacks"]] == [10]
    assert results["quick"] is True and results["data"] == "synthetic" and results["n_test"] == 120
    assert set(results["table1"]) == {"clean", "fgsm", "pgd", "vae", "eigen", "autoattack"}
    # a quick run leaves AutoAttack-l1 out, and says so
    assert set(results["tradeoff"]["lp"]) == {"l1", "pgd", "autoattack"}
    assert results["autoattack"] == {"examples": 20, "skipped": ["autoattack-l1"]}
    assert set(results["audit"]["models"]) == {"std", "fgsm", "pgd", "vae", "joint", "l1", "joint-lp", "eigen",
                                               "joint-eigen"}
    assert all(len(checks) == 11 for checks in results["audit"]["models"].values())
    assert all(checks[-1]["key"] == "k" and checks[-1]["verdict"] == "pass" for checks in results["audit"]["models"].values())
    assert set(results["table1"]["pgd"]) == {"std", "fgsm", "pgd", "vae", "joint", "eigen"}
    assert set(results["tradeoff"]["drops"]) == {"joint-lp", "joint", "joint-eigen"}
    assert set(results["tradeoff"]["eigen"]["eigen"]) == {"pgd", "eigen", "joint-eigen"}
    assert {(r["set"], r["reference"]) for r in results["spectra"]["summary"]} == {
        ("pgd-adv / pgd", "clean"), ("vae-adv / vae", "clean"), ("reconstruction / synthetic-cvae", "clean"),
        ("vae-adv / vae", "reconstruction / synthetic-cvae"), ("eigen-adv / eigen", "clean")}
    assert set(results["models"]) == {"cvae", "std", "fgsm", "pgd", "vae", "joint", "l1", "joint-lp", "eigen",
                                      "joint-eigen"}
    assert results["eigenbasis"]["k"] == 6 and results["eigenbasis"]["explained_min"] > 0.99  # the synthetic rank
    eigen_rows = [e for e in results["evaluations"] if e["attack"] == "eigen"]
    assert eigen_rows and all(0 < e["subspace_share"] <= 1 + 1e-6 and 0 < e["box_kept"] <= 1 + 1e-6
                              for e in eigen_rows)
    assert doc["report"] == str(run / "report.md")
    text = (run / "report.md").read_text()
    assert "QUICK smoke run" in text and "with 2 PGD steps" in text and "## Table 1" in text and "## Table 2" in text and "Measured trade-off" in text
    assert "| AutoAttack (l-inf) |" in text and "## Audit of every model" in text and "on the first 20 test examples" in text
    assert "A quick run leaves out autoattack-l1" in text
    assert "## Eigenspace attacks and the box" in text and "regular vs eigenspace" in text
    # one training and one evaluation seed: every cell is its single measurement
    assert results["seeds"] == {"eval": [0], "train": [0], "seeded_modes": [], "replicates": {}}
    cells = {(c["attack"], c["mode"]): c for c in results["cells"]}
    assert all(cells[(a, m)]["mean"] == v and cells[(a, m)]["n"] == 1 for a, row in results["table1"].items()
               for m, v in row.items())
    assert results["generator"]["model"] == "cvae-mlp" and results["generator"]["latent_eps"] == 1.0
    assert "## Claims" in text and text.index("## Claims") < text.index("## Table 1")
    for fig in results["figures"]:
        assert (run / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    # the trade-off numbers are the differences of the table cells
    t = results["tradeoff"]
    assert t["drops"]["joint"]["vae"] == pytest.approx(t["gen"]["vae"]["vae"] - t["gen"]["vae"]["joint"])


def test_theory_table_renders_from_strict_json():
    """results.json writes inf (the z of a rejected paper form) as null; the report reads it back."""
    from manifoldadv.runtime import console
    from manifoldadv.study import report

    rows = [{"check": "Thm 2: paper's form rejected", "case": "toy", "error": float("inf"), "tolerance": 4.0,
             "kind": "z>", "passed": True},
            {"check": "Thm 6", "case": "toy", "error": 0.0123, "tolerance": 0.03, "kind": "rel", "passed": True}]
    stored = json.loads(json.dumps(console.to_jsonable(rows), allow_nan=False))
    assert stored[0]["error"] is None
    md = report.theory_md(stored)
    assert "2/2 checks pass." in md and "| non-finite | 4 (z>) |" in md and "| 0.0123 | 0.03 (rel) |" in md
    # a check that cannot apply to its case is neither a pass nor a failure
    na = {"check": "Thm 4 (Monte Carlo)", "case": "rank 3", "error": None, "tolerance": 4.0, "kind": "z", "passed": None}
    md = report.theory_md(stored + [na])
    assert "2/3 checks pass (1 not applicable)." in md and "| Thm 4 (Monte Carlo) | rank 3 | n/a | 4 (z) | n/a |" in md


# resumption does not depend on the test set's size: half of TINY's
SMALL = [a if a != "120" else "60" for a in TINY]


@pytest.mark.slow
def test_reproduce_resumes_after_a_kill(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save, real_train = checkpoint.save, training.train
    saves, trained = [], []
    path_of = lambda a, k: inspect.signature(real_save).bind(*a, **k).arguments["path"]  # noqa: E731

    def dying_save(*a, **k):
        real_save(*a, **k)
        saves.append(path_of(a, k))
        if len(saves) == 9:  # cvae (6 epochs) + std (3 epochs) done; killed right after
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", dying_save)
    assert cli("reproduce", *SMALL, "--run-dir", run).exit_code == 130
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert checkpoint.load(run / "synthetic-std.safetensors").meta["complete"]
    assert not (run / "synthetic-fgsm.safetensors").exists()

    # a second kill in the middle of a model: fgsm has 1 of 3 epochs
    saves.clear()

    def dying_save2(*a, **k):
        real_save(*a, **k)
        saves.append(path_of(a, k))
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", dying_save2)
    assert cli("reproduce", *SMALL, "--run-dir", run).exit_code == 130
    assert checkpoint.load(run / "synthetic-fgsm.safetensors").meta["epoch"] == 1
    monkeypatch.setattr(checkpoint, "save", real_save)

    def recording_train(cfg, ds, **kw):
        out = kw["out"]
        start = checkpoint.load(out).meta["epoch"] if out.exists() else 0
        trained.append((cfg.mode, start))
        return real_train(cfg, ds, **kw)

    monkeypatch.setattr(training, "train", recording_train)
    assert cli("reproduce", *SMALL, "--run-dir", run).exit_code == 0
    modes = [m for m, _ in trained]
    assert "cvae" not in modes and "std" not in modes  # finished models are not retrained
    assert ("fgsm", 1) in trained  # the half-trained one resumes at its last epoch
    assert all(start == 0 for m, start in trained if m != "fgsm")
    # everything done: a third run trains nothing and evaluates nothing new
    trained.clear()
    before = (run / "results" / "evals.json").read_text()
    assert cli("reproduce", *SMALL, "--run-dir", run).exit_code == 0
    assert trained == [] and (run / "results" / "evals.json").read_text() == before


def test_study_refuses_checkpoint_with_other_settings(tmp_path):
    run = tmp_path / "run"
    cli_json("train", "--data", "synthetic", "--mode", "std", "--limit", "120", "--epochs", "1",
             "--out", run / "synthetic-std.safetensors")
    assert_usage_error(cli("reproduce", *TINY, "--run-dir", run), "synthetic-std.safetensors", "other settings")


def test_tradeoff_command_json(tmp_path):
    doc = cli_json("tradeoff", "--data", "synthetic", "--quick", "--limit", "100", "--no-autoattack",
                   "--run-dir", tmp_path / "t")
    assert set(doc["lp"]) == {"l1", "pgd"} and set(doc["lp"]["l1"]) == {"l1", "pgd", "joint-lp"}
    assert set(doc["gen"]) == {"pgd", "vae"} and set(doc["gen"]["vae"]) == {"pgd", "vae", "joint"}
    assert doc["lp_attacks"]["l1"] == "l1-worst"
    # the l1 row adds the pointwise attack to SLIDE's own examples (same seed): never higher
    assert all(doc["lp"]["l1"][m] <= doc["l1_slide_only"][m] for m in ("l1", "pgd", "joint-lp"))
    d = doc["drops"]["joint-lp"]
    assert d["mean"] == pytest.approx((d["l1"] + d["pgd"]) / 2)
    assert d["l1"] == pytest.approx(doc["lp"]["l1"]["l1"] - doc["lp"]["l1"]["joint-lp"])
    assert doc["paper"]["drops"] is None  # the paper has no synthetic numbers
