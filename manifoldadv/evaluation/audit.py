"""Cheap sanity checks of a robustness evaluation (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; AutoAttack's own checks): signs that a model masks its gradients, or that an attack
is too weak to be believed. Each check returns a verdict: "pass", "FAIL", "info" (a number to
read, no threshold) or "n/a" (it cannot apply, e.g. no CVAE for the latent check).

Every per-example check compares the same examples; accuracies are on the first `n` test
examples. Thresholds are stated with each check: they are loose on purpose (a check that fails a
sound model is noise), so a failure is a strong sign.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..attacks import external
from ..data import loader
from ..attacks import AttackSpec, frozen, latent_search, make_spec, perturb, with_overrides
from ..config import defaults, latent_eps
from .accuracy import make_generator

EPS_GRID = (0.25, 0.5, 0.75, 1.0)  # fractions of the budget for the monotonicity check
MONOTONE_SLACK = 0.01  # share of examples robust at a larger eps but not at a smaller one
STEPS_SLACK = 0.005  # 0.5 pp: what doubling the steps or adding restarts may change
ZERO_GRAD_LIMIT = 0.01  # share of examples whose input gradient is exactly zero
SQUARE_SLACK = 0.0  # examples Square fools that the white-box attacks did not


@dataclass
class Check:
    key: str
    name: str
    verdict: str
    value: float | None
    detail: str
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"key": self.key, "check": self.name, "verdict": self.verdict, "value": self.value,
                "detail": self.detail, **self.data}


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


class Auditor:
    """Runs the checks on one model over (x, y), reusing attack results between checks."""

    def __init__(self, model, x, y, dataset: str, *, eps: float | None = None, steps: int | None = None,
                 batch_size: int = 500, seed: int = 0, cvae=None, num_classes: int = 10, basis=None):
        self.model, self.x, self.y, self.cvae, self.basis = model, x, y, cvae, basis
        self.dataset, self.batch_size, self.seed, self.num_classes = dataset, batch_size, seed, num_classes
        self.pgd = make_spec("pgd", dataset, eps=eps, steps=steps)
        self._cache: dict = {}

    # --------------------------------------------------------------- running attacks

    def attack(self, spec: AttackSpec) -> torch.Tensor:
        """(x_adv, correct per example) of `spec` over all examples, batched, one seed per spec."""
        key = repr(spec)
        if key not in self._cache:
            gen = make_generator(self.x.device, self.seed)
            outs = []
            for i in range(0, len(self.x), self.batch_size):
                xb, yb = self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
                outs.append(perturb(self.model, xb, yb, spec, cvae=self.cvae, basis=self.basis, generator=gen))
            x_adv = torch.cat(outs) if outs else self.x.clone()
            self._cache[key] = (x_adv, self.correct(x_adv))
        return self._cache[key]

    def correct(self, x) -> torch.Tensor:
        with frozen(self.model), torch.no_grad():
            return torch.cat([self.model(x[i:i + self.batch_size]).argmax(1) == self.y[i:i + self.batch_size]
                              for i in range(0, len(x), self.batch_size)])

    def acc(self, correct: torch.Tensor) -> float:
        return float(correct.float().mean()) if len(correct) else float("nan")

    # --------------------------------------------------------------- the checks

    def monotone_in_eps(self) -> Check:
        grid = [with_overrides(self.pgd, eps=f * self.pgd.eps, step_size=f * self.pgd.step_size) for f in EPS_GRID]
        correct = [self.attack(s)[1] for s in grid]
        # robust at a larger eps but fooled at a smaller one: the attack found less with more room
        bad = torch.zeros_like(correct[0])
        for small, large in zip(correct, correct[1:]):
            bad |= large & ~small
        share = self.acc(bad)
        accs = [round(self.acc(c), 4) for c in correct]
        return Check("a", "robust accuracy falls with eps, per example", _verdict(share <= MONOTONE_SLACK), share,
                     f"PGD accuracy at {', '.join(f'{f:g}' for f in EPS_GRID)} x eps: {accs}; "
                     f"{share:.2%} of examples robust at a larger eps only (limit {MONOTONE_SLACK:.0%})",
                     {"accuracies": accs, "fractions": list(EPS_GRID)})

    def large_budget(self) -> Check:
        spec = make_spec("pgd", self.dataset, eps=1.0, steps=self.pgd.steps)
        acc = self.acc(self.attack(spec)[1])
        chance = 1.0 / self.num_classes
        return Check("b", "an unbounded budget drives accuracy to chance", _verdict(acc <= chance), acc,
                     f"PGD with linf eps 1 (the whole box): accuracy {acc:.2%}, chance {chance:.2%}")

    def more_steps_and_restarts(self) -> Check:
        base = self.acc(self.attack(self.pgd)[1])
        doubled = self.acc(self.attack(with_overrides(self.pgd, steps=2 * self.pgd.steps,
                                                      step_size=self.pgd.step_size / 2))[1])
        restarts = self.acc(self.attack(with_overrides(self.pgd, restarts=3))[1])
        change = max(abs(doubled - base), abs(restarts - base))
        return Check("c", "doubling the steps or adding restarts changes accuracy little", _verdict(change <= STEPS_SLACK),
                     change, f"PGD {self.pgd.steps} steps {base:.2%}, {2 * self.pgd.steps} steps {doubled:.2%}, "
                     f"3 restarts {restarts:.2%} (limit {100 * STEPS_SLACK:.1f} pp)")

    def iterative_beats_one_step(self) -> Check:
        pgd = self.acc(self.attack(self.pgd)[1])
        fgsm = self.acc(self.attack(make_spec("fgsm", self.dataset, eps=self.pgd.eps))[1])
        return Check("d", "iterative accuracy <= single-step accuracy", _verdict(pgd <= fgsm), fgsm - pgd,
                     f"PGD {pgd:.2%}, FGSM {fgsm:.2%}")

    def black_box_not_stronger(self) -> Check:
        if not external.available():
            return Check("e", "black-box Square no stronger than white-box, per example", "n/a", None,
                         f"needs pyautoattack: {external.EXTRA}")
        _, white = self.attack(self.pgd)
        left = white.nonzero().squeeze(1)  # Square runs on what the white-box attack left
        square = make_spec("square", self.dataset, eps=self.pgd.eps)
        fooled_only_by_square = torch.zeros_like(white)
        if len(left):
            sub = Auditor(self.model, self.x[left], self.y[left], self.dataset, eps=self.pgd.eps,
                          steps=self.pgd.steps, batch_size=self.batch_size, seed=self.seed)
            fooled_only_by_square[left] = ~sub.attack(square)[1]
        share = self.acc(fooled_only_by_square)
        return Check("e", "black-box Square no stronger than white-box, per example", _verdict(share <= SQUARE_SLACK),
                     share, f"{share:.2%} of examples fooled by Square (5000 queries) but not by PGD "
                     f"(PGD accuracy {self.acc(white):.2%})")

    def outputs_are_logits(self) -> Check:
        with frozen(self.model), torch.no_grad():
            out = self.model(self.x[:self.batch_size]).double()
        probs = bool((out >= -1e-5).all() and (out <= 1 + 1e-5).all() and ((out.sum(1) - 1).abs() < 1e-5).all())
        return Check("f", "outputs are logits, not probabilities", _verdict(not probs), None,
                     "outputs are in [0, 1] and sum to 1 per example" if probs else "unnormalised scores")

    def zero_gradients(self) -> Check:
        zero = []
        with frozen(self.model):
            for i in range(0, len(self.x), self.batch_size):
                xb = self.x[i:i + self.batch_size].clone().requires_grad_(True)
                loss = F.cross_entropy(self.model(xb), self.y[i:i + self.batch_size], reduction="sum")
                (g,) = torch.autograd.grad(loss, xb)
                zero.append((g.flatten(1) == 0).all(1))
        share = self.acc(torch.cat(zero))
        return Check("g", "examples with an exactly zero input gradient", _verdict(share <= ZERO_GRAD_LIMIT), share,
                     f"{share:.2%} of examples (limit {ZERO_GRAD_LIMIT:.0%})")

    def deterministic(self) -> Check:
        with frozen(self.model), torch.no_grad():
            ref = torch.cat([self.model(self.x[i:i + self.batch_size]) for i in range(0, len(self.x), self.batch_size)])
            again = torch.cat([self.model(self.x[i:i + self.batch_size]) for i in range(0, len(self.x), self.batch_size)])
            odd = torch.cat([self.model(self.x[i:i + 7]) for i in range(0, len(self.x), 7)])
        same = bool(torch.equal(ref.argmax(1), again.argmax(1)) and torch.equal(ref.argmax(1), odd.argmax(1)))
        gap = float((ref - odd).abs().max()) if len(ref) else 0.0
        return Check("h", "predictions deterministic and independent of the batch size", _verdict(same), gap,
                     f"the same predictions twice and in batches of 7; largest logit difference {gap:.2e}")

    def _recheck(self, name: str, x_adv, correct, outside: int, box: int) -> str:
        """What is wrong with an attack's returned examples ("" when nothing): `outside` the ball,
        `box` outside [0, 1], and predictions of a fresh pass in other batches that differ (a
        result that depended on the attack's own forward, its randomness or batch statistics)."""
        with frozen(self.model), torch.no_grad():
            fresh = torch.cat([self.model(x_adv[i:i + 7].clone()).argmax(1) == self.y[i:i + 7]
                               for i in range(0, len(x_adv), 7)])
        if outside or box or not torch.equal(fresh, correct):
            return (f"{name}: {outside} outside the ball, {box} outside the box, "
                    f"{int((fresh != correct).sum())} with another prediction on a fresh pass")
        return ""

    def adversarial_examples_hold(self) -> Check:
        """Each attack's returned examples, re-checked: inside the ball and the box, and the
        accuracy a fresh forward pass gives equals the one the evaluation reported."""
        problems = []
        for spec in (self.pgd, make_spec("fgsm", self.dataset, eps=self.pgd.eps)):
            x_adv, correct = self.attack(spec)
            d = (x_adv - self.x).flatten(1).double()
            dist = d.abs().max(1).values
            outside = int((dist > spec.eps * (1 + 1e-6) + 1e-6).sum())
            box = int(((x_adv < 0) | (x_adv > 1)).flatten(1).any(1).sum())
            problem = self._recheck(spec.name, x_adv, correct, outside, box)
            if problem:
                problems.append(problem)
        return Check("i", "returned adversarial examples re-checked", _verdict(not problems), float(len(problems)),
                     "; ".join(problems) or "every example inside the ball and the box; fresh predictions agree")

    def latent_distortion(self) -> Check:
        if self.cvae is None:
            return Check("j", "latent attack: pixel distortion beside the latent budget", "n/a", None,
                         "no CVAE given (--cvae)")
        eps = latent_eps(self.dataset, self.cvae.latent)
        if eps is None:
            return Check("j", "latent attack: pixel distortion beside the latent budget", "n/a", None,
                         f"{self.dataset} has no default latent budget")
        spec = make_spec("vae", self.dataset, eps=eps)
        dists = []
        for i in range(0, len(self.x), self.batch_size):
            xb, yb = self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
            z0, z = latent_search(self.model, self.cvae, xb, yb, spec)
            with torch.no_grad():
                img = self.cvae.decode_mean(z, yb)
            dists.append(torch.stack([(img - xb).flatten(1).abs().max(1).values,
                                      (img - xb).flatten(1).norm(dim=1), (z - z0).abs().max(1).values], 1))
        d = torch.cat(dists).double()
        linf, l2, lat = (float(v) for v in d.mean(0))
        return Check("j", "latent attack: pixel distortion beside the latent budget", "info", linf,
                     f"latent linf eps {spec.eps:g} (mean |dz|_inf {lat:.3g}) moved images by linf {linf:.3g}, "
                     f"l2 {l2:.3g} on average (the regular budget is linf {self.pgd.eps:g})",
                     {"pixel_linf_mean": linf, "pixel_l2_mean": l2, "latent_linf_mean": lat})

    def eigenspace_examples_hold(self) -> Check:
        """The eigenspace attacks' returned examples: within their budget and the box, in their
        subspace as far as the box lets them (the share is reported), fresh predictions agreeing."""
        name = "eigenspace attacks: examples in budget and box, share in their subspace"
        if self.basis is None:
            return Check("k", name, "n/a", None, "no eigenbasis (--k or --basis, or an eigen-trained model)")
        from ..attacks.eigen import ClassSpan

        if defaults(self.dataset).eigen.eps is None:
            return Check("k", name, "n/a", None, f"{self.dataset} has no default eigenspace budget")
        problems, shares = [], {}
        for attack in ("eigen", "eigen-off", "eigen-off-l2"):  # eigen-off: linf, the audit's PGD budget
            spec = make_spec(attack, self.dataset, eps=self.pgd.eps if attack == "eigen-off" else None)
            x_adv, correct = self.attack(spec)
            d = (x_adv - self.x).flatten(1).double()
            size = d.abs().max(1).values if spec.norm == "linf" else d.norm(dim=1)
            outside = int((size > spec.eps * (1 + 1e-5) + 1e-6).sum())
            box = int(((x_adv < 0) | (x_adv > 1)).flatten(1).any(1).sum())
            span = ClassSpan(self.basis, self.y, torch.float64)
            inside = span.project(d) if spec.kind.subspace == "on" else span.orthogonal(d)
            total = float(d.square().sum())
            shares[attack] = float(inside.square().sum()) / total if total > 0 else 1.0
            problem = self._recheck(attack, x_adv, correct, outside, box)
            if problem:
                problems.append(problem)
        detail = "; ".join(problems) or ("every example inside the ball and the box; fresh predictions agree; "
                                         "share in the subspace after the box: "
                                         + ", ".join(f"{a} {v:.1%}" for a, v in shares.items()))
        return Check("k", name, _verdict(not problems), float(len(problems)), detail, {"subspace_share": shares})

    CHECKS = ("monotone_in_eps", "large_budget", "more_steps_and_restarts", "iterative_beats_one_step",
              "black_box_not_stronger", "outputs_are_logits", "zero_gradients", "deterministic",
              "adversarial_examples_hold", "latent_distortion", "eigenspace_examples_hold")

    def run(self, only=None) -> list[Check]:
        return [getattr(self, name)() for name in self.CHECKS if only is None or name in only]


def audit(model, split, dataset: str, *, device, n: int | None = None, eps=None, steps=None, batch_size=500,
          seed: int = 0, cvae=None, num_classes: int = 10, basis=None) -> list[Check]:
    """Every check on the first `n` examples of `split` (all when None)."""
    split = split.head(n) if n is not None else split
    placed = loader.place(split, device)
    x, y = placed.images(), placed.y
    return Auditor(model, x, y, dataset, eps=eps, steps=steps, batch_size=batch_size, seed=seed, cvae=cvae,
                   num_classes=num_classes, basis=basis).run()


def failed(checks) -> bool:
    return any(c.verdict == "FAIL" for c in checks)
