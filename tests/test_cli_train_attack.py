"""Tiny end-to-end runs of `train` (every mode) and `attack` through the CLI."""

import pytest
import torch

from manifoldadv import checkpoint, training

from helpers import assert_usage_error, cli, cli_json

TINY = ["--data", "synthetic", "--limit", "64", "--epochs", "2", "--adv-start", "1", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def cvae_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("cvae") / "synthetic-cvae.safetensors"
    meta = cli_json("train", "--data", "synthetic", "--mode", "cvae", "--limit", "64", "--epochs", "1", "--out", p)
    assert meta["kind"] == "cvae" and meta["complete"] and meta["test_nelbo"] > 0
    return p


@pytest.mark.parametrize("mode", ["std", "fgsm", "pgd", "l2", "l1", "joint-lp"])
def test_train_each_regular_mode_end_to_end(tmp_path, mode):
    out = tmp_path / f"{mode}.safetensors"
    meta = cli_json("train", *TINY, "--mode", mode, "--out", out)
    assert meta["mode"] == mode and meta["epoch"] == 2 and meta["complete"]
    assert [h["adversarial"] for h in meta["history"]] == [False, mode != "std"]
    assert 0.0 <= meta["clean_accuracy"] <= 1.0
    ck = checkpoint.load(out, kind="classifier")
    assert ck.meta["hparams"]["attacks"] == meta["hparams"]["attacks"]
    names = [a["name"] for a in meta["hparams"]["attacks"]]
    assert names == list(training.MODES[mode].attacks)
    # the default ramp (2 epochs on synthetic) is cut to the one adversarial epoch, and recorded so
    assert meta["hparams"]["eps_warmup"] == (0 if mode == "std" else 1)
    assert meta["hparams"]["clean_weight"] == (0.5 if mode == "fgsm" else 0.0)


@pytest.mark.parametrize("mode,strategy", [("vae", "avg"), ("joint", "avg"), ("joint", "max")])
def test_train_generative_modes_end_to_end(tmp_path, cvae_path, mode, strategy):
    out = tmp_path / f"{mode}.safetensors"
    meta = cli_json("train", *TINY, "--mode", mode, "--strategy", strategy, "--cvae", cvae_path, "--out", out)
    assert meta["complete"] and meta["hparams"]["cvae"] == str(cvae_path)
    assert meta["hparams"]["strategy"] == strategy


def test_vae_mode_trains_a_cvae_first_when_absent(tmp_path):
    out = tmp_path / "synthetic-vae.safetensors"
    r = cli("train", *TINY, "--mode", "vae", "--out", out)
    assert r.exit_code == 0, r.output
    assert "training a CVAE first" in r.stderr
    assert checkpoint.load(tmp_path / "synthetic-cvae.safetensors", kind="cvae").meta["complete"]


def test_classifier_given_as_cvae_is_clear_error(tmp_path):
    clf = tmp_path / "std.safetensors"
    cli_json("train", *TINY, "--mode", "std", "--out", clf)
    r = cli("train", *TINY, "--mode", "vae", "--cvae", clf, "--out", tmp_path / "v.safetensors")
    assert_usage_error(r, "is a classifier checkpoint, expected a cvae")
    r = cli("attack", clf, "--attacks", "clean,vae", "--cvae", clf, "--limit", "16")
    assert_usage_error(r, "expected a cvae")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    # bit-identical results are promised on CPU (CUDA kernels may reduce in varying order)
    args = ["--data", "synthetic", "--limit", "96", "--epochs", "3", "--adv-start", "1", "--steps", "2", "--mode", "pgd",
            "--device", "cpu"]
    full = tmp_path / "full.safetensors"
    cli_json("train", *args, "--out", full)

    part = tmp_path / "part.safetensors"
    real_save, calls = checkpoint.save, []

    def save_then_die(*a, **k):
        real_save(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after epoch 2 was written

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    r = cli("train", *args, "--out", part)
    assert r.exit_code == 130
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert checkpoint.load(part).meta["epoch"] == 2
    r = cli("train", *args, "--out", part, "--resume")
    assert r.exit_code == 0 and "resuming at epoch 3/3" in r.stderr
    a, b = checkpoint.load(full), checkpoint.load(part)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert [h["train_loss"] for h in a.meta["history"]] == [h["train_loss"] for h in b.meta["history"]]
    # a finished run resumes to nothing; different settings refuse to resume
    r = cli("train", *args, "--out", part, "--resume")
    assert r.exit_code == 0 and "nothing to do" in r.stderr
    assert_usage_error(cli("train", *args, "--lr", "0.01", "--out", part, "--resume"), "different settings", "lr")
    assert_usage_error(cli("train", *args, "--out", part), "exists")


def test_attack_matrix_json_and_table(tmp_path, cvae_path):
    a, b = tmp_path / "std.safetensors", tmp_path / "fgsm.safetensors"
    cli_json("train", *TINY, "--mode", "std", "--out", a)
    cli_json("train", *TINY, "--mode", "fgsm", "--out", b)
    doc = cli_json("attack", a, b, "--attacks", "clean,fgsm,pgd,l2,l1,vae", "--cvae", cvae_path, "--limit", "32", "--steps", "2")
    rows = doc["results"]
    assert len(rows) == 12 and {r["mode"] for r in rows} == {"std", "fgsm"}
    for r in rows:
        assert {"checkpoint", "mode", "attack", "norm", "eps", "steps", "accuracy", "n"} <= set(r)
        assert r["n"] == 32 and 0.0 <= r["accuracy"] <= 1.0
    vae = [r for r in rows if r["attack"] == "vae"]
    assert all(r["space"] == "latent" and r["eps"] == 1.0 and r["steps"] == 1 and "recon_accuracy" in r for r in vae)
    assert next(r for r in rows if r["attack"] == "pgd")["eps"] == 0.2
    r = cli("attack", a, b, "--attacks", "clean,pgd", "--limit", "16", "--steps", "1")
    assert r.exit_code == 0 and "std" in r.stdout and "fgsm" in r.stdout and "pgd (linf eps 0.2" in r.stdout
    doc = cli_json("attack", a, "--attacks", "l1,pointwise,l1-worst", "--limit", "32", "--steps", "2", "--l1-eps", "3")
    acc = {r["attack"]: r["accuracy"] for r in doc["results"]}
    assert {r["restarts"] for r in doc["results"] if r["attack"] == "pointwise"} == {5}
    assert all(r["eps"] == 3.0 and r["norm"] == "l1" for r in doc["results"])
    assert acc["l1-worst"] <= acc["l1"]  # SLIDE's examples kept, pointwise's added
    assert next(r for r in doc["results"] if r["attack"] == "l1-worst")["slide_accuracy"] == acc["l1"]


def test_bad_arguments_exit_2(tmp_path):
    assert_usage_error(cli("train", "--mode", "nope"), "--mode")
    assert_usage_error(cli("train", "--data", "svhn"), "--data")
    assert_usage_error(cli("train", "--epochs", "0"), "--epochs")
    assert_usage_error(cli("train", "--device", "tpu"), "--device")
    if not torch.cuda.is_available():
        assert_usage_error(cli("train", *TINY, "--device", "cuda", "--out", tmp_path / "x.safetensors"), "cuda")
    clf = tmp_path / "c.safetensors"
    cli_json("train", *TINY, "--out", clf)
    assert_usage_error(cli("attack", clf, "--attacks", "pgd,warp"), "warp")
    assert_usage_error(cli("attack", clf, "--attacks", "vae"), "--cvae")
    assert_usage_error(cli("attack", tmp_path / "none.safetensors"), "not found")
    assert_usage_error(cli("train", "--mode", "cvae", "--model", "lenet5", "--out", tmp_path / "v.safetensors"), "CVAE model")


def test_cifar10_end_to_end_on_generated_batches(tmp_path):
    from helpers import write_fake_cifar

    write_fake_cifar(tmp_path / "data", per_batch=8)
    common = ["--data", "cifar10", "--data-root", tmp_path / "data", "--epochs", "1"]
    clf = cli_json("train", *common, "--mode", "pgd", "--adv-start", "0", "--steps", "1", "--batch-size", "16",
                   "--out", tmp_path / "c.safetensors")
    assert clf["model"] == "resnet32" and clf["hparams"]["augment"] is True
    assert clf["hparams"]["attacks"][0]["eps"] == pytest.approx(4 / 255)
    cv = cli_json("train", *common, "--mode", "cvae", "--out", tmp_path / "v.safetensors")
    assert cv["model"] == "cvae-cnn" and cv["model_kwargs"]["latent"] == 128
    doc = cli_json("attack", tmp_path / "c.safetensors", "--attacks", "clean,pgd,vae", "--cvae", tmp_path / "v.safetensors",
                   "--data-root", tmp_path / "data", "--steps", "1")
    by = {r["attack"]: r for r in doc["results"]}
    assert by["pgd"]["eps"] == pytest.approx(4 / 255) and by["vae"]["eps"] == pytest.approx(0.1)
    assert all(r["n"] == 8 for r in doc["results"])
    # the eigenspace attacks on three channels: CIFAR-10's budgets; its default k (200) needs more
    # than 200 examples per class, which four per class are not
    write_fake_cifar(tmp_path / "more", per_batch=40)  # about 20 training examples per class
    eig = cli_json("attack", tmp_path / "c.safetensors", "--attacks", "eigen,eigen-off", "--k", "3",
                   "--data-root", tmp_path / "more", "--steps", "1", "--batch-size", "40")
    by = {r["attack"]: r for r in eig["results"]}
    assert by["eigen"]["eps"] == pytest.approx(0.5) and by["eigen-off"]["eps"] == pytest.approx(4 / 255)
    assert by["eigen"]["eigenbasis"]["k"] == 3 and 0 < by["eigen"]["subspace_share"] <= 1 + 1e-6
    assert_usage_error(cli("attack", tmp_path / "c.safetensors", "--attacks", "eigen", "--data-root", tmp_path / "more"),
                       "training examples", "more than 200")
