import math

import pytest
import torch

from manifoldadv import models, training
from manifoldadv.errors import UsageError
from manifoldadv.attacks import AttackSpec, make_spec, maximize, perturb, spec_for
from manifoldadv.data import make_synthetic
from manifoldadv.evaluation import attack_accuracy, clean_accuracy


@pytest.fixture(scope="module")
def trained():
    """A small std-trained MLP on 2000 synthetic examples (a few seconds)."""
    ds = make_synthetic(0)
    ds.train, ds.test = ds.train.head(2000), ds.test.head(300)
    cfg = training.resolve_config("synthetic", "std", model="mlp", epochs=3, seed=0)
    torch.manual_seed(0)
    m = models.create("mlp", in_shape=ds.shape, num_classes=10, mean=ds.mean, std=ds.std)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    for _ in range(cfg.epochs):
        for i in range(0, 2000, 100):
            x, y = ds.train.images(slice(i, i + 100)), ds.train.y[i:i + 100]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    return m, ds


@pytest.mark.parametrize("name", ["fgsm", "pgd", "l2", "l1", "l1-worst"])
def test_adversarial_examples_stay_in_ball_and_box(trained, name):
    m, ds = trained
    x, y = ds.test.images(slice(0, 64)), ds.test.y[:64]
    spec = spec_for(name, "synthetic", steps=5)
    xa = perturb(m, x, y, spec, generator=torch.Generator().manual_seed(0))
    d = (xa - x).flatten(1).double()
    p = {"linf": math.inf, "l2": 2, "l1": 1}[spec.norm]
    assert float(d.norm(p=p, dim=1).max()) <= spec.eps * (1 + 1e-5) + 1e-6
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    assert float(d.abs().max()) > 0  # it moved


def test_accuracy_drops_and_pgd_at_least_as_strong_as_fgsm(trained):
    m, ds = trained
    clean = clean_accuracy(m, ds.test, device="cpu")
    fgsm = attack_accuracy(m, ds.test, make_spec("fgsm", "synthetic"), device="cpu")["accuracy"]
    pgd = attack_accuracy(m, ds.test, make_spec("pgd", "synthetic"), device="cpu")["accuracy"]
    assert clean > 0.9
    assert fgsm < clean - 0.2
    assert pgd <= fgsm


def test_attack_restores_mode_and_grad_flags(trained):
    m, ds = trained
    m.train()
    m.net[1].weight.requires_grad_(False)  # a deliberately mixed state
    perturb(m, ds.test.images(slice(0, 8)), ds.test.y[:8], make_spec("pgd", "synthetic", steps=2))
    assert m.training
    assert [p.requires_grad for p in m.parameters()] == [False if p is m.net[1].weight else True for p in m.parameters()]
    m.net[1].weight.requires_grad_(True)
    m.eval()
    perturb(m, ds.test.images(slice(0, 8)), ds.test.y[:8], make_spec("fgsm", "synthetic"))
    assert not m.training


def test_restarts_keep_the_worst_case(trained):
    m, ds = trained
    x, y = ds.test.images(slice(0, 64)), ds.test.y[:64]
    loss = lambda inp: torch.nn.functional.cross_entropy(m(inp), y, reduction="none")  # noqa: E731
    one = AttackSpec("pgd", "linf", 0.05, 3, 0.02, True, 1)
    three = AttackSpec("pgd", "linf", 0.05, 3, 0.02, True, 3)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    x1 = maximize(loss, x, one, generator=torch.Generator().manual_seed(5))
    x3 = maximize(loss, x, three, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        l1, l3 = loss(x1), loss(x3)
    # the first restart of x3 is x1 (same generator), so best-of-three can only be worse for the model
    assert bool((l3 >= l1 - 1e-6).all()) and bool((l3 > l1 + 1e-6).any())
    for p in m.parameters():
        p.requires_grad_(True)


def test_attacks_are_deterministic_for_a_seed(trained):
    m, ds = trained
    x, y = ds.test.images(slice(0, 32)), ds.test.y[:32]
    spec = make_spec("l1", "synthetic", steps=3)
    a = perturb(m, x, y, spec, generator=torch.Generator().manual_seed(1))
    b = perturb(m, x, y, spec, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_make_spec_defaults_follow_the_paper():
    pgd = make_spec("pgd", "mnist")
    assert (pgd.eps, pgd.steps, pgd.random_start) == (0.2, 40, True)
    assert make_spec("pgd", "mnist", train=True).eps == 0.25
    fgsm = make_spec("fgsm", "mnist")
    assert (fgsm.steps, fgsm.step_size, fgsm.random_start) == (1, 0.2, False)
    assert make_spec("vae", "mnist").eps == 1.0 and make_spec("vae", "cifar10").eps == 0.1
    assert make_spec("pgd", "cifar10").eps == pytest.approx(4 / 255) and make_spec("pgd", "cifar10").steps == 10
    assert make_spec("l1", "mnist").eps == 10 and make_spec("l2", "cifar10").eps == 0.5


def test_eps_warmup_ramps_regular_attacks_only():
    cfg = training.resolve_config("mnist", "joint", adv_start=10, eps_warmup=2, cvae="c.safetensors")
    obj = training.ClassifierObjective(cfg)
    pgd, vae = cfg.specs()
    assert pgd.name == "pgd" and vae.name == "vae"
    for epoch, scale in [(10.0, 0.0), (10.5, 0.25), (11.0, 0.5), (12.0, 1.0), (25.0, 1.0)]:
        w = obj.warm(pgd, epoch)
        assert w.eps == pytest.approx(0.25 * scale) and w.step_size == pytest.approx(pgd.step_size * scale)
        assert obj.warm(vae, epoch) == vae  # the latent attack is never ramped
    assert training.resolve_config("mnist", "std").eps_warmup == 0
    assert training.resolve_config("mnist", "vae").eps_warmup == 0
    assert training.resolve_config("cifar10", "pgd").eps_warmup == 0
    assert training.resolve_config("mnist", "pgd").eps_warmup == 2


@pytest.mark.parametrize("name,kw", [("fgsm", {"steps": 3}), ("fgsm", {"restarts": 2}), ("vae", {"step_size": 0.1}),
                                     ("pointwise", {"steps": 5}), ("fgsm", {"random_start": True})])
def test_options_an_attack_does_not_take_are_refused(name, kw):
    with pytest.raises(UsageError, match="not apply"):
        make_spec(name, "synthetic", **kw)
    # a run's options for the iterative attacks leave the others as they are, and say so in the spec
    spec = spec_for(name, "synthetic", **{k: v for k, v in kw.items() if k != "random_start"})
    assert spec == make_spec(name, "synthetic")


def test_registry_is_the_one_home_of_attack_rules():
    from manifoldadv.attacks import KINDS, LATENT, REGULAR

    assert LATENT == ("vae", "vae-pgd", "vae-l2") and "clean" not in REGULAR
    assert [n for n, k in KINDS.items() if not k.iterative] == ["clean", "fgsm", "pointwise", "vae", "autoattack",
                                                               "autoattack-l2", "autoattack-l1", "apgd-ce", "apgd-t",
                                                               "square"]
    assert make_spec("l1-worst", "synthetic").as_dict()["pointwise_version"] >= 1
