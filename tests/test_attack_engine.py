"""The fused attack engine (manifoldadv::fused_attack, attack_input_grad) against autograd in
float64 and against the eager attack path.

Tolerance rule for whole attacks: the engine's float32 sums run in another order than torch's
convolutions, so its gradients equal autograd's to about 1e-7 relative, not bit for bit. An
attack step is a discontinuous function of the gradient: a sign (l-inf), a top-k selection (l1),
and every ReLU mask and max-pool choice on the way. Where a coordinate's gradient is within
rounding of zero, or an activation within rounding of a kink, the two paths can take different
steps, and from then on their trajectories differ by up to the step size. Hence: one step from
the same point must agree everywhere except where the reference gradient itself is ambiguous
(|g_i| <= 1e-4 max|g|), and over 40 steps at least 90% of the images must stay within 1e-4 of the
eager path (random nets here: 96.5-100% did, per norm and shape), all inside the budget and box.
"""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from manifoldadv import models, ops
from manifoldadv.attacks import fused, make_spec, perturb
from manifoldadv.ops import attack_engine as AE

needs_engine = pytest.mark.skipif(not AE.compiled(), reason="the attack engine is not built")
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NORMS = {"linf": (0.3, 0.01), "l2": (2.0, 0.1), "l1": (10.0, 1.0)}


def lenet(shape, seed=0):
    torch.manual_seed(seed)
    c = shape[0]
    return models.create("lenet5", in_shape=shape, num_classes=10, mean=(0.2,) * c, std=(0.3,) * c).eval()


def batch(shape, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def rel_err(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def grad64(x, y, params, layers):
    return AE.attack_input_grad_reference(x.double(), y, [p.double() for p in params], layers)


@needs_engine
@pytest.mark.parametrize("data", sorted(SHAPES))
def test_lenet_input_gradient_equals_float64_autograd(data):
    model = lenet(SHAPES[data])
    params, layers = fused.plan(model)
    x, y = batch(SHAPES[data], 37)  # 4 full tiles of 8 images and a partial one
    logits, g = AE.attack_input_grad(x, y, params, layers)
    logits64, g64 = grad64(x, y, params, layers)
    assert rel_err(g, g64) < 1e-4
    assert rel_err(logits, logits64) < 1e-4
    # and the model itself, through autograd in float32 (channels-last LeNet5 as attacks run it)
    xr = x.clone().requires_grad_(True)
    (gm,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    assert rel_err(g, gm.double()) < 1e-4


@st.composite
def networks(draw):
    """A random sequence of the layers the engine runs, its parameters and a batch."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(3, 13)), draw(st.integers(3, 13))
    shape = (c, h, w)
    params = [torch.rand(c, generator=g), 0.2 + torch.rand(c, generator=g)]
    layers = [0, 0]
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.integers(1, 5))
        pad = draw(st.integers(0, k))
        if h + 2 * pad < k or w + 2 * pad < k:
            continue
        co = draw(st.integers(1, 9))
        params += [torch.randn(co, c, k, k, generator=g) / math.sqrt(c * k * k), 0.1 * torch.randn(co, generator=g)]
        layers += [1, pad]
        c, h, w = co, h + 2 * pad - k + 1, w + 2 * pad - k + 1
        if draw(st.booleans()):
            layers += [2, 0]
        if h >= 2 and w >= 2 and draw(st.booleans()):
            layers += [3, 0]
            h, w = h // 2, w // 2
    layers += [4, 0]
    f = c * h * w
    widths = draw(st.lists(st.integers(1, 24), min_size=0, max_size=2)) + [draw(st.integers(2, 12))]
    for i, o in enumerate(widths):
        params += [torch.randn(o, f, generator=g) / math.sqrt(f), 0.1 * torch.randn(o, generator=g)]
        layers += [5, 0]
        if i + 1 < len(widths) and draw(st.booleans()):
            layers += [2, 0]
        f = o
    n = draw(st.integers(1, 19))
    x = torch.rand(n, *shape, generator=g)
    y = torch.randint(0, f, (n,), generator=g)
    return x, y, params, layers


@needs_engine
@SETTINGS
@given(networks())
def test_random_networks_input_gradient_equals_float64_autograd(net):
    x, y, params, layers = net
    logits, g = AE.attack_input_grad(x, y, params, layers)
    logits64, g64 = grad64(x, y, params, layers)
    assert logits.shape == logits64.shape and g.shape == x.shape
    assert rel_err(logits, logits64) < 1e-4
    assert rel_err(g, g64) < 1e-4


@needs_engine
@pytest.mark.parametrize("data", sorted(SHAPES))
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_one_step_equals_the_step_of_autograds_gradient(data, norm):
    """From the same points, one fused step is pgd_step of autograd's gradient, coordinate for
    coordinate, except where that gradient's sign or rank is within rounding (module docstring)."""
    shape = SHAPES[data]
    params, layers = fused.plan(lenet(shape))
    x0, y = batch(shape, 24)
    eps, step = NORMS[norm]
    x = AE.fused_attack_reference(x0, y, x0, params, layers, 3, step, eps, norm, 0.0, 1.0, 0.99, False)[0]
    got, _ = AE.fused_attack(x0, y, x, params, layers, 1, step, eps, norm, 0.0, 1.0, 0.99, False)
    _, g = AE.attack_input_grad_reference(x, y, params, layers)
    want = ops.pgd_step_reference(x, x0, g, step=step, eps=eps, norm=norm)
    differ = (got - want).abs() > 1e-5
    gmax = g.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
    ambiguous = g.abs() <= 1e-4 * gmax
    if norm == "l1":  # a coordinate at the selection threshold: the sample's whole step changes
        a = g.flatten(1).abs()
        k = ops.l1_topk(a.shape[1], 0.99)
        top = a.topk(k + 1, dim=1).values
        near = (top[:, k - 1] - top[:, k]).abs() <= 1e-4 * top[:, 0]
        ambiguous = ambiguous | near.view(-1, 1, 1, 1)
    assert not (differ & ~ambiguous).any()
    assert differ.float().mean() < 0.01


@needs_engine
@pytest.mark.parametrize("data", sorted(SHAPES))
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_forty_steps_follow_the_eager_path(data, norm):
    shape = SHAPES[data]
    params, layers = fused.plan(lenet(shape))
    x0, y = batch(shape, 64)
    eps, step = NORMS[norm]
    start = (x0 + 0.5 * eps / math.sqrt(x0[0].numel()) * torch.randn_like(x0)).clamp(0, 1) if norm != "linf" \
        else (x0 + eps * (2 * torch.rand_like(x0) - 1)).clamp(0, 1)
    got, logits = AE.fused_attack(x0, y, start, params, layers, 40, step, eps, norm, 0.0, 1.0, 0.99, True)
    want, logits_ref = AE.fused_attack_reference(x0, y, start, params, layers, 40, step, eps, norm, 0.0, 1.0,
                                                 0.99, True)
    close = (got - want).flatten(1).abs().amax(1) <= 1e-4
    assert close.float().mean() >= 0.9
    assert torch.allclose(logits[close], logits_ref[close], atol=1e-4)
    d = (got - x0).flatten(1)
    p = {"linf": math.inf, "l2": 2, "l1": 1}[norm]
    assert (d.norm(p=p, dim=1) <= eps * (1 + 1e-5) + 1e-6).all()
    assert got.min() >= 0 and got.max() <= 1


@needs_engine
def test_an_image_gets_the_same_bits_alone_in_any_batch_and_thread_count():
    params, layers = fused.plan(lenet(SHAPES["mnist"]))
    x0, y = batch(SHAPES["mnist"], 21)
    run = lambda a, b: AE.fused_attack(a, b, a, params, layers, 5, 0.01, 0.3, "linf", 0.0, 1.0, 0.99, True)  # noqa: E731
    whole, logits = run(x0, y)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread, _ = run(x0, y)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(whole, one_thread)
    for i in (0, 9, 20):
        alone, lg = run(x0[i:i + 1], y[i:i + 1])
        assert torch.equal(alone[0], whole[i]) and torch.equal(lg[0], logits[i])
    perm = torch.randperm(21, generator=torch.Generator().manual_seed(3))
    shuffled, _ = run(x0[perm], y[perm])
    assert torch.equal(shuffled, whole[perm])


@needs_engine
@pytest.mark.parametrize("name,restarts", [("pgd", 1), ("pgd", 3), ("fgsm", 1), ("l2", 2), ("l1", 1)])
def test_perturb_uses_the_engine_and_agrees_with_the_eager_path(name, restarts, monkeypatch):
    """Labels = the model's predictions and budgets where some images fall and some do not, so
    that the restart bookkeeping (fooling restart first, else highest loss) decides."""
    model = lenet(SHAPES["mnist"])
    x, _ = batch(SHAPES["mnist"], 40)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = {"pgd": 0.065, "fgsm": 0.1, "l2": 2.0, "l1": 10.0}[name]
    spec = make_spec(name, "mnist", eps=eps, **({} if name == "fgsm" else {"steps": 10, "restarts": restarts}))
    calls = []
    real = AE.fused_attack
    monkeypatch.setattr(AE, "fused_attack", lambda *a: calls.append(1) or real(*a))
    got = perturb(model, x, y, spec, generator=torch.Generator().manual_seed(5))
    assert len(calls) == restarts
    monkeypatch.setenv(fused.ENV, "0")
    want = perturb(model, x, y, spec, generator=torch.Generator().manual_seed(5))
    assert len(calls) == restarts
    close = (got - want).flatten(1).abs().amax(1) <= 1e-4
    assert close.float().mean() >= 0.9
    with torch.no_grad():
        fooled = model(got).argmax(1) != y
        assert torch.equal(fooled[close], (model(want).argmax(1) != y)[close])
    if restarts > 1 and name == "pgd":
        assert 0.1 < fooled.float().mean() < 0.9  # the case the bookkeeping decides
    assert model.training is False and all(p.requires_grad for p in model.parameters())


@needs_engine
def test_which_models_qualify():
    x, y = batch(SHAPES["mnist"], 2)
    spec = make_spec("pgd", "mnist")
    model = lenet(SHAPES["mnist"])
    assert fused.why_not(model, x, y, spec) is None
    mlp = models.create("mlp", in_shape=SHAPES["mnist"], num_classes=10)
    assert fused.why_not(mlp, x, y, spec) is None
    assert "eigen" in fused.why_not(model, x, y, make_spec("eigen", "mnist"))
    handle = model.net[3].register_forward_hook(lambda m, i, o: o * 2)
    assert fused.why_not(model, x, y, spec) == "it has hooks"
    handle.remove()
    model.precision = "bf16"
    assert "bf16" in fused.why_not(model, x, y, spec)
    model.precision = "fp32"
    model.net[0].stride = (2, 2)
    assert "Conv2d" in fused.why_not(model, x, y, spec)
    model.net[0].stride = (1, 1)
    assert fused.why_not(model.double(), x, y, spec) is not None
    assert "Classifier" in fused.why_not(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x, y, spec)
    resnet = models.create("resnet20", in_shape=(3, 32, 32), num_classes=10)
    assert "Sequential" in fused.why_not(resnet, *batch((3, 32, 32), 2), spec)


@needs_engine
def test_hooked_model_runs_eagerly_and_the_hook_counts():
    """A hook that changes the output must change the attack: the engine never sees it."""
    model = lenet(SHAPES["mnist"])
    x, y = batch(SHAPES["mnist"], 16)
    spec = make_spec("pgd", "mnist", steps=5)
    plain = perturb(model, x, y, spec, generator=torch.Generator().manual_seed(1))
    model.net[-1].register_forward_hook(lambda m, i, o: -o)
    hooked = perturb(model, x, y, spec, generator=torch.Generator().manual_seed(1))
    assert (plain - hooked).abs().max() > 0.05


@needs_engine
def test_bad_networks_are_refused_with_a_message():
    x, y = batch(SHAPES["mnist"], 4)
    params, layers = fused.plan(lenet(SHAPES["mnist"]))
    op = torch.ops.manifoldadv.attack_input_grad.default
    with pytest.raises(RuntimeError, match="outside"):
        op(x, y + 10, params, layers)
    with pytest.raises(RuntimeError, match="weight"):
        op(x, y, [params[0], params[1], params[2].transpose(0, 1)] + params[3:], layers)
    with pytest.raises(RuntimeError, match="flatten"):
        i = layers[::2].index(4)
        op(x, y, params, layers[:2 * i] + layers[2 * i + 2:])
    with pytest.raises(RuntimeError, match="unused"):
        op(x, y, params + [params[-1]], layers)
    with pytest.raises(RuntimeError, match="float32"):
        op(x.double(), y, params, layers)


@needs_engine
def test_opcheck():
    params, layers = fused.plan(lenet(SHAPES["mnist"]))
    x, y = batch(SHAPES["mnist"], 9)
    torch.library.opcheck(torch.ops.manifoldadv.attack_input_grad.default, (x, y, params, layers))
    torch.library.opcheck(torch.ops.manifoldadv.fused_attack.default,
                          (x, y, x.clone(), params, layers, 2, 0.01, 0.3, "linf", 0.0, 1.0, 0.99, True))
    torch.library.opcheck(torch.ops.manifoldadv.fused_attack.default,
                          (x, y, x.clone(), params, layers, 1, 0.1, 2.0, "l2", 0.0, 1.0, 0.99, False))


@needs_engine
def test_default_isa_engine_matches(tmp_path):
    """The baseline-ISA table (ATEN_CPU_CAPABILITY=default) computes the same gradients."""
    script = tmp_path / "check.py"
    script.write_text(
        "import torch\n"
        "from manifoldadv import _C, models\n"
        "from manifoldadv.attacks import fused\n"
        "from manifoldadv.ops import attack_engine as AE\n"
        "assert _C.cpu_isa() == 'default', _C.cpu_isa()\n"
        "torch.manual_seed(0)\n"
        "m = models.create('lenet5', in_shape=(1, 28, 28), num_classes=10).eval()\n"
        "p, l = fused.plan(m)\n"
        "x = torch.rand(11, 1, 28, 28); y = torch.randint(0, 10, (11,))\n"
        "lg, g = AE.attack_input_grad(x, y, p, l)\n"
        "_, g64 = AE.attack_input_grad_reference(x.double(), y, [t.double() for t in p], l)\n"
        "err = ((g.double() - g64).abs().max() / g64.abs().max()).item()\n"
        "assert err < 1e-4, err\n"
        "print('ok')\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
