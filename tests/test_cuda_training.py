"""The training path on a CUDA GPU (skipped without one): batches cut on the device, no host
synchronisation per batch, channels-last convolutions, compiled training, bf16 forwards."""

import copy
import warnings

import pytest
import torch

from manifoldadv.runtime import accel
from manifoldadv import checkpoint, models, training
from manifoldadv.data import loader
from manifoldadv.attacks import make_spec
from manifoldadv.data import Dataset, Split, load_dataset
from manifoldadv.evaluation import attack_accuracy, clean_accuracy

pytestmark = pytest.mark.cuda


def random_split(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g))


def test_host_and_device_placement_cut_the_same_batches():
    split = random_split(300, (3, 8, 8))
    on_device, on_host = loader.place(split, "cuda"), loader.place(split, "cuda", fraction=0.0)
    assert on_device.x.is_cuda and on_host.x.is_pinned() and not on_host.x.is_cuda
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(300, generator=gen)
    crops = loader.draw_crops(gen, 300, 64)
    cpu = [(x.cuda(), y.cuda()) for x, y, _ in loader.batches(split, 64, "cpu", order=order, crops=crops)]
    dev = list(loader.batches(on_device, 64, "cuda", order=order, crops=crops))
    host = list(loader.batches(on_host, 64, "cuda", order=order, crops=crops))
    assert len(dev) == len(host) == len(cpu) == 5
    for (x, y, _), (xh, yh, _), (xc, yc) in zip(dev, host, cpu):
        assert x.is_cuda and xh.is_cuda and torch.equal(x, xh) and torch.equal(y, yh) and torch.equal(y, yc)
        # the uint8 -> [0, 1] division may round differently on the two devices (pixels are 1/255 apart)
        torch.testing.assert_close(x, xc, rtol=0, atol=1e-6)


def sync_warnings(fn) -> int:
    """How many synchronising CUDA calls fn makes (torch's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("mode,augment,graphs", [("std", True, False), ("pgd", True, False), ("joint-lp", False, False),
                                                 ("pgd", False, True)])
def test_training_synchronises_per_epoch_not_per_batch(tmp_path, mode, augment, graphs):
    counts = []
    for batches in (3, 7):  # with attack graphs: one capture (it synchronises) in either run
        ds = load_dataset("synthetic")
        ds.train, ds.test = ds.train.head(32 * batches), ds.test.head(64)
        cfg = training.resolve_config("synthetic", mode, epochs=1, adv_start=0, steps=2, batch_size=32,
                                      augment=augment, limit=32 * batches, eps_warmup=0)
        out = tmp_path / f"{mode}-{batches}.safetensors"
        counts.append(sync_warnings(lambda: training.train(cfg, ds, device="cuda", out=out, compile=False,
                                                           attack_graphs=graphs)))
    assert counts[0] == counts[1], counts
    assert counts[0] > 0  # the mode sees the per-epoch reads


def test_evaluation_synchronises_per_run_not_per_batch():
    torch.manual_seed(0)
    model = models.create("lenet5", in_shape=(1, 28, 28), num_classes=10).cuda()
    counts = []
    for batches in (2, 6):
        split = load_dataset("synthetic").test.head(25 * batches)

        def run():
            clean_accuracy(model, split, device="cuda", batch_size=25)
            attack_accuracy(model, split, make_spec("pgd", "synthetic", steps=3), device="cuda", batch_size=25)

        counts.append(sync_warnings(run))
    assert counts[0] == counts[1], counts


def test_channels_last_on_cuda_and_the_same_function_as_cpu():
    torch.manual_seed(0)
    model = models.create("resnet20", in_shape=(3, 32, 32), num_classes=10).eval()
    gpu = copy.deepcopy(model).cuda()
    convs = [m for m in gpu.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.rand(16, 3, 32, 32)
    allow = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32
    try:
        out = gpu(x.cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = allow
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)


def test_compiled_training_with_cuda_graphs_tracks_eager(tmp_path):
    split = random_split(256, (1, 28, 28))
    ds = Dataset("mnist", split, random_split(128, (1, 28, 28), seed=1), 10, (1, 28, 28), (0.13,), (0.31,))
    cfg = training.resolve_config("mnist", "pgd", epochs=2, adv_start=0, steps=3, batch_size=64, eps_warmup=0,
                                  limit=256)
    eager = training.train(cfg, ds, device="cuda", out=tmp_path / "e.safetensors", compile=False)
    comp = training.train(cfg, ds, device="cuda", out=tmp_path / "c.safetensors", compile=True)
    assert comp["compile"] is True and eager["compile"] is False
    for he, hc in zip(eager["history"], comp["history"]):
        assert abs(he["train_loss"] - hc["train_loss"]) <= 1e-3 * abs(he["train_loss"]), (he, hc)
    a, b = checkpoint.load(tmp_path / "e.safetensors"), checkpoint.load(tmp_path / "c.safetensors")
    for k, v in a.state_dict().items():  # Adam turns last-bit gradient differences into visible steps
        assert float((b.state_dict()[k] - v).norm()) <= 1e-3 * float(v.norm()) + 1e-6, k


@pytest.mark.mnist
def test_bf16_attack_as_strong_as_fp32_on_cuda(mnist_root, tmp_path):
    ds = load_dataset("mnist", mnist_root)
    ds.train, ds.test = ds.train.head(20000), ds.test.head(1000)
    cfg = training.resolve_config("mnist", "std", epochs=2, limit=20000)
    out = tmp_path / "std.safetensors"
    training.train(cfg, ds, device="cuda", out=out, compile=False)
    acc = {}
    for precision in ("fp32", "bf16"):
        m, _ = checkpoint.load_model(out, kind="classifier", device="cuda")
        m = accel.prepare(m, precision=precision)
        spec = make_spec("pgd", "mnist", eps=0.1, steps=10)
        acc[precision] = attack_accuracy(m, ds.test, spec, device="cuda", batch_size=500)["accuracy"]
    assert 0.2 < acc["fp32"] < 0.9 and abs(acc["bf16"] - acc["fp32"]) <= 0.01, acc
