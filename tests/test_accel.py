"""The GPU-grade loop on CPU: no host reads per batch, bf16 forwards that keep the attack as
strong, compiled forwards equal to eager ones, and precision recorded where results are."""

import collections
import sys

import pytest
import torch
import torch.nn.functional as F

from manifoldadv.runtime import accel
from manifoldadv import checkpoint, models, training
from manifoldadv.evaluation import spectrum
from manifoldadv.attacks import frozen, make_spec, perturb
from manifoldadv.data import load_dataset
from manifoldadv.evaluation import attack_accuracy, clean_accuracy

from helpers import assert_usage_error, cli, cli_json

# Python-level reads of a tensor's value: on CUDA each waits for the device.
READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "cpu", "numpy")


# Reads of tensors that are host tensors on every device: ClassCovariance checks labels given
# on the host when they arrive (labels on a GPU are checked once per merge).
HOST_ONLY = {"manifoldadv.ops.covariance._check_labels"}


@pytest.fixture
def reads(monkeypatch):
    """Counts value reads made by manifoldadv's own code (torch's internals, such as Adam reading
    its host-side step count, are not device reads)."""
    counts = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            frame = sys._getframe(1)
            where = f"{frame.f_globals.get('__name__', '')}.{frame.f_code.co_name}"
            if where.startswith("manifoldadv") and where not in HOST_ONLY:
                counts[f"{where}.{_name}"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def synthetic(n):
    ds = load_dataset("synthetic")
    ds.train, ds.test = ds.train.head(n), ds.test.head(n)
    return ds


@pytest.mark.parametrize("mode,augment", [("std", True), ("pgd", False), ("joint-lp", True)])
def test_training_reads_the_device_per_epoch_not_per_batch(tmp_path, reads, mode, augment):
    seen = []
    for batches in (2, 6):
        ds = synthetic(32 * batches)
        cfg = training.resolve_config("synthetic", mode, epochs=1, adv_start=0, steps=2, batch_size=32,
                                      augment=augment, limit=32 * batches)
        reads.clear()
        training.train(cfg, ds, device="cpu", out=tmp_path / f"{mode}{batches}.safetensors")
        seen.append(dict(reads))
    assert seen[0] == seen[1], seen
    assert sum(seen[0].values()) > 0  # the counter sees the per-epoch reads (loss, accuracy, checkpoint)


def test_evaluation_and_spectra_read_the_device_per_run_not_per_batch(reads):
    torch.manual_seed(0)
    model = models.create("lenet5", in_shape=(1, 28, 28), num_classes=10)
    seen = []
    for batches in (2, 6):
        split = synthetic(25 * batches).test
        reads.clear()
        clean_accuracy(model, split, device="cpu", batch_size=25)
        attack_accuracy(model, split, make_spec("pgd", "synthetic", steps=2), device="cpu", batch_size=25)
        energy = spectrum.PerturbationEnergy({c: torch.eye(784, 3, dtype=torch.float64) for c in range(10)})
        spectrum.accumulate(split, list(range(10)), device="cpu", batch_size=25, energy=energy,
                            transform=spectrum.attacked(model, make_spec("pgd", "synthetic", steps=2)))
        energy.fractions()
        seen.append(dict(reads))
    assert seen[0] == seen[1], seen


@pytest.fixture(scope="module")
def mnist_lenet(tmp_path_factory):
    from conftest import SHARED_MNIST

    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST not found")
    ds = load_dataset("mnist", SHARED_MNIST)
    ds.train, ds.test = ds.train.head(20000), ds.test.head(1000)
    cfg = training.resolve_config("mnist", "std", epochs=2, limit=20000)
    out = tmp_path_factory.mktemp("mnist") / "std.safetensors"
    training.train(cfg, ds, device="cpu", out=out)
    return out, ds


def zero_gradient_fraction(model, x, y):
    with frozen(model):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    assert g.dtype == torch.float32
    return float((g == 0).float().mean())


@pytest.mark.mnist
def test_bf16_keeps_input_gradients_and_attack_strength_on_mnist(mnist_lenet):
    """bf16 has float32's exponent range: input gradients do not underflow to 0 (fp16 autocast,
    measured on this model: 0.94% zeros against 0.073% in fp32), and PGD is as strong."""
    path, ds = mnist_lenet
    x, y = ds.test.images(slice(0, 500)), ds.test.y[:500]

    def load(precision):
        m, _ = checkpoint.load_model(path, kind="classifier")
        return accel.prepare(m, precision=precision)

    fp32, bf16 = load("fp32"), load("bf16")
    assert clean_accuracy(fp32, ds.test, device="cpu") > 0.9
    z32, z16 = zero_gradient_fraction(fp32, x, y), zero_gradient_fraction(bf16, x, y)
    assert z16 <= z32 + 1e-3, (z32, z16)

    def pgd(model, eps):
        spec = make_spec("pgd", "mnist", eps=eps, steps=10)
        return attack_accuracy(model, ds.test, spec, device="cpu", batch_size=500)["accuracy"]

    a32, a16 = pgd(fp32, 0.1), pgd(bf16, 0.1)
    assert 0.2 < a32 < 0.9, a32  # a budget where accuracy can move both ways
    assert abs(a16 - a32) <= 0.01, (a32, a16)
    # the 1 pp bound is tight enough to notice an attack 10% weaker in budget
    assert pgd(fp32, 0.09) - a32 > 0.01


def test_bf16_forward_keeps_perturbation_and_gradient_float32():
    torch.manual_seed(0)
    model = accel.prepare(models.create("resnet20", in_shape=(3, 8, 8), num_classes=10), precision="bf16")
    x = torch.rand(4, 3, 8, 8)
    y = torch.arange(4)
    assert model(x).dtype == torch.float32
    x_adv = perturb(model, x, y, make_spec("pgd", "cifar10", steps=2))
    assert x_adv.dtype == torch.float32 and (x_adv - x).abs().max() <= 4 / 255 + 1e-7
    with pytest.raises(Exception, match="precision"):
        accel.prepare(model, precision="fp16")


def test_compiled_forward_and_input_gradient_equal_eager():
    torch.manual_seed(0)
    model = models.create("lenet5", in_shape=(1, 28, 28), num_classes=10)
    compiled = accel.prepare(model, compile=True, device="cpu")
    assert compiled is not model and set(compiled.state_dict()) == {f"_orig_mod.{k}" for k in model.state_dict()}
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    out = {}
    for name, net in (("eager", model), ("compiled", compiled)):
        with frozen(net):
            xr = x.clone().requires_grad_(True)
            logits = net(xr)
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y), xr)
        out[name] = (logits.detach(), g)
    torch.testing.assert_close(out["compiled"][0], out["eager"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["compiled"][1], out["eager"][1], rtol=1e-4, atol=1e-7)


def test_compiled_training_equals_eager_training(tmp_path):
    ds = synthetic(64)
    cfg = training.resolve_config("synthetic", "pgd", epochs=1, adv_start=0, steps=2, batch_size=32, limit=64)
    eager = training.train(cfg, ds, device="cpu", out=tmp_path / "e.safetensors", compile=False)
    comp = training.train(cfg, ds, device="cpu", out=tmp_path / "c.safetensors", compile=True)
    assert eager["compile"] is False and comp["compile"] is True
    a, b = checkpoint.load(tmp_path / "e.safetensors"), checkpoint.load(tmp_path / "c.safetensors")
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=1e-4, atol=1e-5)


TINY = ["--data", "synthetic", "--limit", "64", "--epochs", "1", "--device", "cpu"]


def test_precision_is_recorded_and_must_match_on_resume(tmp_path):
    out = tmp_path / "bf16.safetensors"
    meta = cli_json("train", *TINY, "--mode", "std", "--precision", "bf16", "--out", out)
    assert meta["precision"] == "bf16" and meta["hparams"]["precision"] == "bf16" and meta["compile"] is False
    assert_usage_error(cli("train", *TINY, "--mode", "std", "--out", out, "--resume"),
                       "different settings", "precision")
    rows = cli_json("attack", out, "--attacks", "clean,pgd", "--steps", "2", "--limit", "32", "--device", "cpu",
                    "--precision", "bf16")["results"]
    assert {(r["precision"], r["compile"]) for r in rows} == {("bf16", False)}
    assert_usage_error(cli("train", *TINY, "--mode", "cvae", "--precision", "bf16", "--out", tmp_path / "c.st"),
                       "precision")
    assert_usage_error(cli("train", *TINY, "--mode", "cvae", "--compile", "--out", tmp_path / "c.st"), "compile")
    assert_usage_error(cli("train", *TINY, "--precision", "fp16"), "precision")


def test_compile_default_follows_the_device_and_purpose(monkeypatch):
    from conftest import REAL_DEFAULT_COMPILE

    monkeypatch.setattr(accel, "default_compile", REAL_DEFAULT_COMPILE)
    assert [accel.resolve_compile(None, d, p) for d in ("cpu", "cuda") for p in ("train", "eval")] == \
        [False, False, True, False]
    assert accel.resolve_compile(True, "cpu", "eval") is True and accel.resolve_compile(False, "cuda", "train") is False
    with pytest.raises(ValueError):
        accel.resolve_compile(None, "cpu", "test")
