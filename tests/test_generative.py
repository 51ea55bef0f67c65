"""The generative side: CVAE training, the latent-space attack and its budget."""

import dataclasses
import math

import pytest
import torch

from manifoldadv import models, training
from manifoldadv.attacks import latent_search, make_spec, perturb, spec_for, with_overrides
from manifoldadv.data import make_synthetic
from manifoldadv.evaluation import attack_accuracy


@pytest.fixture(scope="module")
def small():
    ds = make_synthetic(0)
    ds.train, ds.test = ds.train.head(1500), ds.test.head(200)
    return ds


@pytest.fixture(scope="module")
def trained_pair(small, tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    cfg = training.resolve_config("synthetic", "cvae", epochs=6, seed=0)
    training.train(cfg, small, device="cpu", out=d / "cvae.safetensors")
    cfg = training.resolve_config("synthetic", "std", model="mlp", epochs=3, seed=0)
    training.train(cfg, small, device="cpu", out=d / "std.safetensors")
    from manifoldadv import checkpoint

    cvae, _ = checkpoint.load_model(d / "cvae.safetensors", kind="cvae")
    clf, _ = checkpoint.load_model(d / "std.safetensors", kind="classifier")
    return clf, cvae


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_cvae_loss_decreases_on_synthetic(small, tmp_path, likelihood):
    cfg = training.resolve_config("synthetic", "cvae", epochs=4, seed=0)
    cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "likelihood": likelihood, "sigma": 0.1})
    torch.manual_seed(0)
    fresh = models.create(cfg.model, in_shape=small.shape, num_classes=10, **cfg.model_kwargs)
    before = training.cvae_test_metrics(fresh, small.test, "cpu")
    meta = training.train(cfg, small, device="cpu", out=tmp_path / "c.safetensors")
    # the -ELBO's floor is the reconstruction term of a perfect reconstruction (KL >= 0)
    x = small.test.images().flatten(1).double().clamp(1e-7, 1 - 1e-7)
    if fresh.likelihood == "bernoulli":  # grey levels: their own entropy sum_i H(x_i)
        floor = float(-(x * x.log() + (1 - x) * (1 - x).log()).sum(1).mean())
    else:  # Gaussian: the normalising constant
        floor = x.shape[1] * math.log(fresh.sigma * math.sqrt(2 * math.pi))
    assert before["test_nelbo"] > floor and meta["test_nelbo"] > floor - 1e-3
    assert meta["test_nelbo"] - floor < 0.5 * (before["test_nelbo"] - floor)
    assert meta["test_recon_mse"] < 0.5 * before["test_recon_mse"]


@pytest.mark.parametrize("name,p", [("vae", math.inf), ("vae-pgd", math.inf), ("vae-l2", 2)])
def test_latent_attack_stays_in_its_latent_ball(trained_pair, small, name, p):
    clf, cvae = trained_pair
    x, y = small.test.images(slice(0, 64)), small.test.y[:64]
    spec = spec_for(name, "synthetic", steps=4)
    z0, z = latent_search(clf, cvae, x, y, spec, generator=torch.Generator().manual_seed(0))
    dist = (z - z0).norm(p=p, dim=1)
    assert float(dist.max()) <= spec.eps * (1 + 1e-5)
    assert float(dist.max()) > 0.5 * spec.eps
    if name == "vae":  # FGSM: every coordinate moves by exactly eps (where the gradient is non-zero)
        moved = (z - z0).abs()
        assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], spec.eps), atol=1e-5)
    xa = perturb(clf, x, y, spec, cvae=cvae, generator=torch.Generator().manual_seed(0))
    assert xa.shape == x.shape and float(xa.min()) >= 0 and float(xa.max()) <= 1


def test_latent_attack_lowers_accuracy_below_reconstructions(trained_pair, small):
    clf, cvae = trained_pair
    # a large latent budget so the effect on this tiny model is unmistakable
    spec = with_overrides(make_spec("vae-pgd", "synthetic", steps=10), eps=3.0, step_size=0.75)
    res = attack_accuracy(clf, small.test, spec, device="cpu", cvae=cvae)
    assert res["recon_accuracy"] > 0.8
    assert res["accuracy"] < res["recon_accuracy"] - 0.2
    weak = attack_accuracy(clf, small.test, with_overrides(spec, eps=0.5, step_size=0.125), device="cpu", cvae=cvae)
    assert res["accuracy"] <= weak["accuracy"]  # a larger budget is at least as strong


def test_vae_training_makes_model_more_robust_to_the_latent_attack(trained_pair, small, tmp_path):
    clf, cvae = trained_pair
    from manifoldadv import checkpoint

    spec = make_spec("vae", "synthetic")
    cfg = training.resolve_config("synthetic", "vae", model="mlp", epochs=4, adv_start=1, seed=0, budgets={"latent": 3.0})
    training.train(cfg, small, device="cpu", out=tmp_path / "vae.safetensors", cvae=cvae)
    robust, _ = checkpoint.load_model(tmp_path / "vae.safetensors", kind="classifier")
    attack = with_overrides(spec, eps=3.0, step_size=3.0)
    std_acc = attack_accuracy(clf, small.test, attack, device="cpu", cvae=cvae)["accuracy"]
    vae_acc = attack_accuracy(robust, small.test, attack, device="cpu", cvae=cvae)["accuracy"]
    assert vae_acc > std_acc + 0.1
