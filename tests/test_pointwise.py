"""The gradient-free Pointwise attack: adversarial, inside box and budget, 1-minimal, never
better than the exact l1 optimum, and it finds what gradient attacks cannot see."""

import pytest
import torch

from manifoldadv.attacks import make_spec, perturb
from manifoldadv.data import Split
from manifoldadv.evaluation import attack_accuracy
from manifoldadv.attacks.pointwise import pointwise


class Linear2(torch.nn.Module):
    """Class 1 iff w.x + b > 0: the exact minimal l1 change has a closed form."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


class Threshold(torch.nn.Module):
    """A first layer that thresholds pixels at 0.5, like l-inf-trained MNIST nets: below it the
    gradient is exactly zero, so SLIDE cannot move, but one bright pixel changes the class."""

    def forward(self, x):
        s = 10 * torch.relu(x.flatten(1) - 0.5).sum(1)
        return torch.stack([torch.full_like(s, 0.1), s], 1)


def min_l1_to_flip(w, b, x):
    """Exact l1 distance to class 1 within [0, 1] (fractional knapsack: largest |w_i| first), float64."""
    w, x = w.double(), x.double()
    need = -(x @ w + b)
    if need < 0:
        return 0.0
    room = torch.where(w > 0, 1 - x, x)  # how far each pixel can move in its useful direction
    total = 0.0
    for i in torch.argsort(w.abs(), descending=True):
        gain = float(w[i].abs() * room[i])
        if gain >= need:
            return total + float(need / w[i].abs())
        need, total = need - gain, total + float(room[i])
    return float("inf")


def test_linear_model_against_exact_l1_optimum():
    g = torch.Generator().manual_seed(0)
    d, n = 12, 40
    w = torch.randn(d, generator=g)
    x = torch.rand(n, 1, 3, 4, generator=g) * 0.6
    b = -float((x.flatten(1) @ w).max()) - 0.3  # every clean input is class 0
    model = Linear2(w, b).eval()
    y = torch.zeros(n, dtype=torch.long)
    eps = 1.5
    xa, fooled = pointwise(model, x, y, eps=eps, generator=torch.Generator().manual_seed(1), restarts=3)
    opt = torch.tensor([min_l1_to_flip(w, b, xi) for xi in x.flatten(1)])
    dist = (xa - x).flatten(1).double().abs().sum(1)
    pred = model(xa).argmax(1)
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    assert torch.equal(pred == 1, fooled)  # fooled means misclassified ...
    assert bool((dist[fooled] <= eps * (1 + 1e-6)).all())  # ... within the budget
    assert torch.equal(xa[~fooled], x[~fooled])  # otherwise the clean input comes back
    assert bool((dist[fooled] >= opt[fooled] - 1e-5).all())  # nobody beats the optimum
    assert not bool(fooled[opt > eps].any())
    assert int(fooled.sum()) >= int((opt <= eps / 2).sum())  # and it finds the easy ones


def test_result_is_one_minimal():
    """No single changed pixel can be reset to its clean value without undoing the attack."""
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(0)  # the weights: some draws predict one class everywhere, and nothing can be fooled
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model.eval()
    x = torch.rand(24, 1, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    xa, fooled = pointwise(model, x, y, eps=1e9, generator=torch.Generator().manual_seed(3))
    assert bool(fooled.any())
    with torch.no_grad():
        for i in fooled.nonzero().squeeze(1).tolist():
            changed = (xa[i] != x[i]).flatten().nonzero().squeeze(1)
            assert len(changed) > 0
            for j in changed.tolist():
                back = xa[i].clone().flatten()
                back[j] = x[i].flatten()[j]
                assert int(model(back.view(1, 1, 4, 4)).argmax(1)) == int(y[i])


def test_finds_what_gradient_masking_hides():
    model = Threshold().eval()
    x = torch.zeros(32, 1, 8, 8)
    y = torch.zeros(32, dtype=torch.long)
    eps = 0.6
    g = torch.Generator().manual_seed(0)
    x_slide = perturb(model, x, y, make_spec("l1", "synthetic", eps=eps, steps=20), generator=g)
    assert int((model(x_slide).argmax(1) != y).sum()) == 0  # zero gradient: SLIDE is blind
    xa, fooled = pointwise(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert bool(fooled.all())
    assert torch.equal((xa != x).flatten(1).sum(1), torch.ones(32, dtype=torch.long))  # one pixel each
    v = xa.flatten(1).max(1).values
    assert bool(((v > 0.51) & (v < 0.51 + 2 ** -9)).all())  # bisected down to the threshold
    worst = perturb(model, x, y, make_spec("l1-worst", "synthetic", eps=eps, steps=20),
                    generator=torch.Generator().manual_seed(0))
    assert int((model(worst).argmax(1) != y).sum()) == 32


def test_misclassified_inputs_cost_nothing_and_runs_repeat():
    model = Threshold().eval()
    x = torch.zeros(6, 1, 4, 4)
    x[:2, 0, 0, 0] = 1.0  # already class 1
    y = torch.zeros(6, dtype=torch.long)
    runs = [pointwise(model, x, y, eps=0.7, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    (xa, fooled), (xb, _) = runs
    assert torch.equal(xa, xb)
    assert bool(fooled.all()) and torch.equal(xa[:2], x[:2])


@pytest.mark.parametrize("restarts", [1, 4])
def test_worst_case_is_never_weaker_than_slide(restarts):
    """`l1-worst` keeps SLIDE's examples and adds the pointwise ones, batch after batch on one
    generator (the evaluation loop's use): its SLIDE must be exactly the plain `l1` attack's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model.train()
    x = torch.rand(90, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, 4, (90,), generator=torch.Generator().manual_seed(8))
    kw = dict(eps=3.0, steps=10, restarts=restarts)
    out = {}
    for name in ("l1", "l1-worst"):
        g = torch.Generator().manual_seed(0)
        out[name] = torch.cat([perturb(model, x[sl], y[sl], make_spec(name, "synthetic", **kw), generator=g)
                               for sl in (slice(0, 30), slice(30, 60), slice(60, 90))])
    assert model.training  # mode restored
    with torch.no_grad():
        ok_s, ok_w = model(out["l1"]).argmax(1) == y, model(out["l1-worst"]).argmax(1) == y
    assert bool((ok_w <= ok_s).all()) and int(ok_w.sum()) < int(ok_s.sum())
    xw = out["l1-worst"]
    assert float((xw - x).flatten(1).abs().sum(1).max()) <= 3.0 + 1e-5
    assert float(xw.min()) >= 0 and float(xw.max()) <= 1
    assert bool(torch.equal(xw[(~ok_s)], out["l1"][~ok_s]))  # SLIDE's own examples, unchanged


def test_evaluation_reports_slide_alone_from_the_worst_case_run():
    """attack_accuracy under `l1-worst` also counts what SLIDE alone left correct: exactly the
    plain `l1` attack's accuracy over the same batches and seed, so Table 2 needs one run."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    split = Split(torch.rand(90, 1, 6, 6, generator=torch.Generator().manual_seed(7)),
                  torch.randint(0, 4, (90,), generator=torch.Generator().manual_seed(8)))
    kw = dict(eps=3.0, steps=10)
    res = {name: attack_accuracy(model, split, make_spec(name, "synthetic", **kw), device="cpu", batch_size=30, seed=3)
           for name in ("l1", "l1-worst")}
    assert "slide_accuracy" not in res["l1"]
    assert res["l1-worst"]["slide_accuracy"] == res["l1"]["accuracy"]
    assert res["l1-worst"]["accuracy"] < res["l1"]["accuracy"]  # the pointwise attack added some


def test_pointwise_spec_defaults():
    s = make_spec("pointwise", "mnist")
    assert (s.norm, s.eps, s.restarts, s.space) == ("l1", 10.0, 5, "input")
    assert make_spec("pointwise", "mnist", restarts=1).restarts == 1
    assert make_spec("l1-worst", "mnist").steps == make_spec("l1", "mnist").steps
