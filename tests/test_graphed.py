"""Attack graphs (graphed.py): a replayed attack is the eager attack. On CPU the capture is
emulated (a replay reruns the captured function on the same static tensors), which checks what
the CUDA path shares with it: static inputs refreshed per call, random starts drawn as in
`perturb`, live parameters read, which attacks are graphed and when; tests marked cuda capture
real CUDA graphs."""

import copy

import pytest
import torch

from manifoldadv.attacks import graphed
from manifoldadv.data import loader
from manifoldadv import models, training
from manifoldadv.attacks import make_spec, perturb, with_overrides
from manifoldadv.data import Split, load_dataset
from manifoldadv.errors import UsageError
from manifoldadv.attacks.graphed import AttackGraphs, eager_capture


def lenet(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return models.create("lenet5", in_shape=(1, 28, 28), num_classes=10).to(device)


def batches(n, size=16, device="cpu"):
    test = load_dataset("synthetic").test
    return [(test.images(slice(i * size, (i + 1) * size)).to(device), test.y[i * size:(i + 1) * size].to(device))
            for i in range(n)]


def nudge(model):
    """An optimizer step's worth of in-place change (the graph must see it)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01).add_(1e-3)


@pytest.mark.parametrize("name", ["pgd", "l2", "l1", "fgsm"])
def test_replays_equal_the_eager_attack_batch_after_batch(name, monkeypatch):
    # graphs replay the eager descend (on CUDA, where the CPU engine never runs): compare with it
    monkeypatch.setenv("MANIFOLDADV_FUSED_ATTACK", "0")
    model = lenet()
    spec = make_spec(name, "synthetic", steps=3) if name != "fgsm" else make_spec(name, "synthetic")
    graphs = AttackGraphs(model, capture=eager_capture)
    g_graph, g_eager = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got, want = [], []
    for x, y in batches(4):
        got.append(graphs.run(x, y, spec, generator=g_graph))
        want.append(perturb(model, x, y, spec, generator=g_eager))
        assert float((got[-1] - x).abs().max()) > 0  # the attack moved
        nudge(model)
    assert all(torch.equal(a, b) for a, b in zip(got, want))  # earlier results are not overwritten
    assert (graphs.captures, graphs.replays) == (1, 3)  # eager once, then one graph replayed
    assert torch.equal(g_graph.get_state(), g_eager.get_state())  # the same draws


def test_a_changing_budget_runs_eagerly_and_a_stable_one_is_captured_once_per_shape():
    model = lenet()
    spec = make_spec("pgd", "synthetic", steps=2)
    graphs = AttackGraphs(model, capture=eager_capture)
    (x, y), (x2, y2) = batches(2)
    for scale in (0.2, 0.4, 0.6, 0.8):  # the --eps-warmup ramp: a new eps every batch
        s = with_overrides(spec, eps=spec.eps * scale, step_size=spec.step_size * scale)
        assert torch.equal(graphs.run(x, y, s, generator=torch.Generator().manual_seed(1)),
                           perturb(model, x, y, s, generator=torch.Generator().manual_seed(1)))
    assert graphs.captures == 0
    for xb, yb in ((x, y), (x, y), (x2[:10], y2[:10]), (x2[:10], y2[:10]), (x, y)):
        graphs.run(xb, yb, spec)
    assert graphs.captures == 2 and len(graphs.graphs) == 2  # a full and a last, smaller batch
    small = AttackGraphs(model, capture=eager_capture, max_graphs=1)
    for xb, yb in ((x, y), (x, y), (x2[:10], y2[:10]), (x2[:10], y2[:10])):
        small.run(xb, yb, spec)
    assert small.captures == 2 and len(small.graphs) == 1


@pytest.mark.parametrize("name,kw", [("pgd", {"restarts": 2}), ("pointwise", {}), ("l1-worst", {}), ("clean", {})])
def test_attacks_it_does_not_take_are_left_to_perturb(name, kw):
    graphs = AttackGraphs(lenet(), capture=eager_capture)
    (x, y), = batches(1)
    spec = make_spec(name, "synthetic", **kw)
    assert graphs.run(x, y, spec) is None and graphs.run(x, y, spec) is None and graphs.captures == 0


def test_a_failed_capture_turns_graphs_off_and_the_attack_still_runs(capsys):
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    model = lenet()
    graphs = AttackGraphs(model, capture=broken)
    spec = make_spec("pgd", "synthetic", steps=2)
    for x, y in batches(3):
        got = graphs.run(x, y, spec, generator=torch.Generator().manual_seed(2))
        if got is None:
            got = perturb(model, x, y, spec, generator=torch.Generator().manual_seed(2))
        assert torch.equal(got, perturb(model, x, y, spec, generator=torch.Generator().manual_seed(2)))
    assert graphs.off.startswith("RuntimeError") and graphs.captures == 0
    assert capsys.readouterr().err.count("attack graphs off") == 1


@pytest.mark.parametrize("mode", ["pgd", "joint-lp"])
def test_training_with_graphed_attacks_is_bit_identical_on_cpu(mode):
    ds = load_dataset("synthetic")
    split = loader.place(ds.train.head(200), "cpu")
    cfg = training.resolve_config("synthetic", mode, epochs=1, adv_start=0, steps=2, batch_size=64, limit=200,
                                  eps_warmup=0)
    runs = []
    for use in (False, True):
        model = lenet()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        graphs = AttackGraphs(model, capture=eager_capture) if use else None
        objective = training.ClassifierObjective(cfg, graphs=graphs)
        loss, acc = training.train_epoch(model, opt, objective, split, cfg, 0, "cpu")
        runs.append((copy.deepcopy(model.state_dict()), loss, acc, graphs))
    (a, la, aa, _), (b, lb, ab, graphs) = runs
    per_attack = len(cfg.attacks)  # 4 batches (64, 64, 64, 8): eager, captured, replayed, eager
    assert (graphs.captures, graphs.replays) == (per_attack, 2 * per_attack)
    assert (la, aa) == (lb, ab) and all(torch.equal(a[k], b[k]) for k in a)


def no_host_read_capture(fn):
    """eager_capture, failing if the captured function reads a tensor's value on the host: a CUDA
    graph cannot hold such a read (capture fails, or a replay reuses the captured value)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the captured attack reads a tensor value on the host")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "numpy"):
            mp.setattr(torch.Tensor, name, refuse)
        return eager_capture(fn)


@pytest.mark.parametrize("name", ["pgd", "l2", "l1", "fgsm"])
def test_the_captured_attack_reads_nothing_back(name):
    model = lenet()
    spec = make_spec(name, "synthetic", steps=3) if name != "fgsm" else make_spec(name, "synthetic")
    graphs = AttackGraphs(model, capture=no_host_read_capture)
    for x, y in batches(2):
        graphs.run(x, y, spec, generator=torch.Generator().manual_seed(0))
    assert graphs.captures == 1


def test_training_a_batchnorm_net_with_graphed_attacks_is_bit_identical_on_cpu():
    """ResNet20: the graph's eval-mode BatchNorm reads the running statistics that the training
    forwards update in place; crop + flip augmentation."""
    g = torch.Generator().manual_seed(0)
    split = loader.place(Split(torch.randint(0, 256, (40, 3, 16, 16), generator=g, dtype=torch.uint8),
                               torch.randint(0, 10, (40,), generator=g)), "cpu")
    cfg = training.resolve_config("cifar10", "pgd", model="resnet20", epochs=1, adv_start=0, steps=2,
                                  batch_size=16, eps_warmup=0, augment=True)
    runs = []
    for use in (False, True):
        torch.manual_seed(0)
        model = models.create("resnet20", in_shape=(3, 16, 16), num_classes=10)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        graphs = AttackGraphs(model, capture=eager_capture) if use else None
        training.train_epoch(model, opt, training.ClassifierObjective(cfg, graphs=graphs), split, cfg, 0, "cpu")
        runs.append((copy.deepcopy(model.state_dict()), graphs))
    (a, _), (b, graphs) = runs
    assert (graphs.captures, graphs.replays) == (1, 1)  # batches of 16, 16, 8
    assert any("running_mean" in k for k in a) and all(torch.equal(a[k], b[k]) for k in a)


def test_attack_graphs_are_refused_where_they_cannot_run(tmp_path):
    with pytest.raises(UsageError, match="CUDA graphs"):
        graphed.require("cpu", training.mode("pgd"))
    with pytest.raises(UsageError, match="cvae"):
        graphed.require("cuda", training.mode("cvae"))
    cfg = training.resolve_config("synthetic", "pgd", epochs=1, adv_start=0, steps=1, limit=64)
    with pytest.raises(UsageError, match="--attack-graphs"):
        training.train(cfg, load_dataset("synthetic"), device="cpu", out=tmp_path / "m.safetensors", attack_graphs=True)
    assert not (tmp_path / "m.safetensors").exists()
    ds = load_dataset("synthetic")
    ds.train, ds.test = ds.train.head(64), ds.test.head(32)
    meta = training.train(cfg, ds, device="cpu", out=tmp_path / "m.safetensors")  # the default: off, recorded
    assert meta["attack_graphs"] is False


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("name", ["pgd", "l2", "l1"])
def test_cuda_graph_replays_track_the_eager_attack(name):
    model = lenet(device="cuda")
    spec = make_spec(name, "synthetic", steps=5)
    graphs = AttackGraphs(model)
    for i, (x, y) in enumerate(batches(4, size=64, device="cuda")):
        got = graphs.run(x, y, spec, generator=torch.Generator("cuda").manual_seed(i))
        want = perturb(model, x, y, spec, generator=torch.Generator("cuda").manual_seed(i))
        # the same kernels in the same order; a last-bit gradient difference may flip a sign step
        assert float((got - want).abs().gt(1e-6).float().mean()) <= 0.01, i
        assert float((got - x).abs().max()) > 0
        nudge(model)  # in place, as Adam: the graph reads the live parameters
    assert (graphs.captures, graphs.replays) == (1, 3)


@pytest.mark.cuda
def test_cuda_training_with_attack_graphs_tracks_eager(tmp_path):
    ds = load_dataset("synthetic")
    ds.train, ds.test = ds.train.head(640), ds.test.head(128)
    cfg = training.resolve_config("synthetic", "pgd", epochs=2, adv_start=0, steps=3, batch_size=64, limit=640)
    eager = training.train(cfg, ds, device="cuda", out=tmp_path / "e.safetensors", compile=False)
    graph = training.train(cfg, ds, device="cuda", out=tmp_path / "g.safetensors", compile=False, attack_graphs=True)
    assert graph["attack_graphs"] is True and eager["attack_graphs"] is False
    for he, hg in zip(eager["history"], graph["history"]):
        assert abs(he["train_loss"] - hg["train_loss"]) <= 1e-2 * abs(he["train_loss"]), (he, hg)
