"""Regular (input-space) and generative (latent-space) attacks through ONE loop.

An attack is data (`AttackSpec`): a norm, a budget, steps and a step size, and the space it
works in. `perturb` runs the same projected-gradient loop for all of them; FGSM is one linf step
of size eps from x0 with no random start; the latent attack runs that loop on z = I_y(x) with
no box and decodes G_y(z'). Two l1 attacks go beyond gradients, because l-inf training masks
the l1 gradient on MNIST (see `pointwise.py`): `pointwise`, gradient-free, and `l1-worst`, per
sample the worst case of SLIDE (`l1`) and `pointwise` (run on the samples SLIDE leaves). Every
step is `manifoldadv.ops.pgd_step_` (the fused kernel when built). Attacks put the model (and CVAE) in eval mode with frozen parameters and restore both
afterwards.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from . import distributed, external, ops
from .pointwise import VERSION as POINTWISE_VERSION, pointwise
from .config import defaults
from .errors import UsageError

@dataclass(frozen=True)
class AttackKind:
    """What kind of attack a name is: the one place each rule about attacks lives.

    space: "input" (regular: pixels in [0, 1]) or "latent" (a CVAE's latent, no box).
    one_step: a single step of size eps from x0, no random start (FGSM, the latent FGSM): steps,
      step size and restarts do not apply. gradient_free: needs no gradient (restarts, no steps).
    parts: a "worst of" composite: each part runs on what the parts before it left robust, and an
      example counts as robust only if every part failed (AutoAttack's robust-flags loop). A
      built-in composite derives its parts from its own budget; `worst:A,B,...` gives each part
      its own spec.
    first_reported_as: a composite also reports its first part's accuracy under this name.
    external: run by its authors' package with their fixed settings (external.py): eps and norm only.
    """

    name: str
    norm: str
    space: str = "input"
    one_step: bool = False
    gradient_free: bool = False
    restarts: int = 1
    parts: tuple[str, ...] = ()
    first_reported_as: str | None = None
    identity: bool = False
    external: bool = False

    @property
    def iterative(self) -> bool:
        """Takes --steps, --step-size and --restarts."""
        return not (self.one_step or self.gradient_free or self.identity or self.external or self.parts
                    and self.name.startswith(WORST))


POINTWISE_RESTARTS = 5  # NOTES.md: 1 / 3 / 5 restarts on MNIST l-inf-adv

KINDS: dict[str, AttackKind] = {k.name: k for k in (
    AttackKind("clean", "none", identity=True),
    AttackKind("fgsm", "linf", one_step=True),
    AttackKind("pgd", "linf"),
    AttackKind("l2", "l2"),
    AttackKind("l1", "l1"),
    AttackKind("pointwise", "l1", gradient_free=True, restarts=POINTWISE_RESTARTS),
    AttackKind("l1-worst", "l1", parts=("l1", "pointwise"), first_reported_as="slide_accuracy"),
    AttackKind("vae", "linf", space="latent", one_step=True),
    AttackKind("vae-pgd", "linf", space="latent"),
    AttackKind("vae-l2", "l2", space="latent"),
    AttackKind("autoattack", "linf", external=True),
    AttackKind("autoattack-l2", "l2", external=True),
    AttackKind("autoattack-l1", "l1", external=True),
    AttackKind("apgd-ce", "linf", external=True),
    AttackKind("apgd-t", "linf", external=True),
    AttackKind("square", "linf", external=True),
)}
WORST = "worst:"  # worst:A,B,... is the per-example worst case of attacks A, B, ...
REGULAR = tuple(n for n, k in KINDS.items() if k.space == "input" and not k.identity)
LATENT = tuple(n for n, k in KINDS.items() if k.space == "latent")
ATTACKS = tuple(KINDS)
NORM_OF = {n: k.norm for n, k in KINDS.items() if not k.identity}


def kind(name: str) -> AttackKind:
    if name in KINDS:
        return KINDS[name]
    if name.startswith(WORST):  # built on demand, not added: KINDS stays the registry as declared
        return _worst_kind(name)
    raise UsageError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}, or {WORST}A,B,...")


def worst_name(names) -> str:
    return WORST + ",".join(names)


@functools.lru_cache(maxsize=None)
def _worst_kind(name: str) -> AttackKind:
    parts = tuple(dict.fromkeys(p.strip() for p in name[len(WORST):].split(",") if p.strip()))
    bad = [p for p in parts if p not in KINDS or KINDS[p].identity or KINDS[p].parts]
    if not parts or bad:
        raise UsageError(f"{name!r}: the worst case is taken over attacks from {', '.join(ATTACKS[1:])} "
                         f"(not clean or another composite){'; not ' + ', '.join(bad) if bad else ''}")
    norms = {KINDS[p].norm for p in parts}
    latent = any(KINDS[p].space == "latent" for p in parts)
    return AttackKind(name, norms.pop() if len(norms) == 1 else "mixed", "latent" if latent else "input", parts=parts)


def eps_option(name: str, *, linf=None, l2=None, l1=None, latent=None):
    """Which of the per-norm eps options (None: the data set's default) sets attack `name`'s budget."""
    if kind(name).space == "latent":
        return latent
    return {"linf": linf, "l2": l2, "l1": l1}.get(NORM_OF.get(name))


def _uses_pointwise(name: str) -> bool:
    k = kind(name)
    return k.gradient_free or any(KINDS[p].gradient_free for p in k.parts)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    norm: str = "linf"
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0
    random_start: bool = False
    restarts: int = 1
    l1_quantile: float = 0.99
    parts: tuple = ()  # a worst:... composite's own specs

    @property
    def space(self) -> str:
        return kind(self.name).space

    @property
    def kind(self) -> AttackKind:
        return kind(self.name)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["space"] = self.space
        d.pop("parts")
        if self.parts:
            d["parts"] = [p.as_dict() for p in self.parts]
        if _uses_pointwise(self.name):
            d["pointwise_version"] = POINTWISE_VERSION
        if self.kind.external:
            d["external"] = external_version()
        return d


def external_version() -> str:
    try:
        from importlib.metadata import version

        return f"pyautoattack {version('pyautoattack')}"
    except Exception:  # not installed: the row says so
        return "pyautoattack (not installed)"


def describe(spec: dict, *, step_size: bool = False) -> str:
    """One line naming an attack and its budget, from `AttackSpec.as_dict()` (or an evaluation
    row holding it): "pgd (linf eps 0.2, 40 steps)"; `step_size` adds the step."""
    name = spec["name"]
    k = kind(name)
    if k.identity:
        return name
    if spec.get("parts"):
        return "worst of " + "; ".join(describe(p, step_size=step_size) for p in spec["parts"])
    if k.external:
        what = "the standard version" if name.startswith("autoattack") else "AutoAttack's settings"
        return f"{name} ({spec['norm']} eps {spec['eps']:g}, {what})"
    budget = f"{'latent ' if spec.get('space') == 'latent' else ''}{spec['norm']} eps {spec['eps']:g}"
    if k.gradient_free:  # restarts, no steps
        return f"{name} ({budget}, gradient-free, {spec['restarts']} restarts)"
    steps = f"{spec['steps']} step{'' if spec['steps'] == 1 else 's'}"
    if step_size:
        steps += f" of {spec['step_size']:.4g}"
    extra = "".join(f" + {p} on what {k.parts[0] if k.parts[0] != 'l1' else 'SLIDE'} leaves" for p in k.parts[1:])
    restarts = f", {spec['restarts']} restarts" if spec.get("restarts", 1) > 1 else ""
    return f"{name} ({budget}, {steps}{restarts}{extra})"


def default_step_size(eps: float, steps: int) -> float:
    return 2.5 * eps / max(steps, 1)


def make_spec(name: str, dataset: str, *, train: bool = False, eps: float | None = None, steps: int | None = None,
              step_size: float | None = None, restarts: int | None = None, random_start: bool | None = None) -> AttackSpec:
    """The attack `name` with the data set's defaults (training or test budgets), overridable.
    Options an attack does not take (steps for FGSM, ...) are refused, not dropped."""
    k = kind(name)
    if k.identity:
        return AttackSpec(name, norm="none")
    if name.startswith(WORST):
        return worst_spec(name, [spec_for(p, dataset, train=train) for p in k.parts])
    given = {"steps": steps, "step size": step_size, "restarts": restarts, "random start": random_start}
    if k.one_step or k.external:
        given = {o: v for o, v in given.items() if v is not None}
    elif k.gradient_free:
        given = {o: v for o, v in given.items() if v is not None and o != "restarts"}
    else:
        given = {}
    if given:
        why = ("one step of size eps from x" if k.one_step else
               "its authors' fixed settings" if k.external else "no gradient steps")
        raise UsageError(f"attack {name} takes {why}: {', '.join(given)} do{'es' if len(given) == 1 else ''} not apply")
    restarts = k.restarts if restarts is None else restarts
    if restarts < 1:
        raise UsageError(f"restarts must be >= 1, got {restarts}")
    d = defaults(dataset)
    if k.space == "latent":
        eps = d.latent_eps if eps is None else eps
    else:
        eps = (d.train_eps if train else d.test_eps)[k.norm] if eps is None else eps
    if eps < 0:
        raise UsageError(f"attack {name}: need eps >= 0, got {eps}")
    if k.one_step:
        return AttackSpec(name, k.norm, float(eps), 1, float(eps), False, 1)
    if k.external:
        return AttackSpec(name, k.norm, float(eps), 0, 0.0, False, 1)
    if k.gradient_free:
        return AttackSpec(name, k.norm, float(eps), 0, 0.0, False, int(restarts))
    steps = (d.latent_steps if k.space == "latent" else d.steps) if steps is None else steps
    if steps < 1:
        raise UsageError(f"attack {name}: need steps >= 1, got {steps}")
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    rs = True if random_start is None else random_start
    return AttackSpec(name, k.norm, float(eps), int(steps), float(step_size), rs, int(restarts))


def spec_for(name: str, dataset: str, *, budgets: dict | None = None, steps=None, step_size=None, restarts=None,
             **kw) -> AttackSpec:
    """make_spec with a run's options: the eps of the attack's norm from `budgets` ({"linf", "l2",
    "l1", "latent"}: None or missing is the default), and steps, step size and restarts for the
    iterative attacks (FGSM, the latent FGSM, pointwise's steps, AutoAttack get their own). A
    worst:... composite applies them to each of its parts."""
    k = kind(name)
    budgets = budgets or {}
    if name.startswith(WORST):
        return worst_spec(name, [spec_for(p, dataset, budgets=budgets, steps=steps, step_size=step_size,
                                          restarts=restarts, **kw) for p in k.parts])
    if not k.iterative:
        steps = step_size = None
        if not k.gradient_free:
            restarts = None
    return make_spec(name, dataset, eps=eps_option(name, **budgets), steps=steps, step_size=step_size,
                     restarts=restarts, **kw)


def worst_spec(name: str, parts: list[AttackSpec]) -> AttackSpec:
    k = kind(name)
    return AttackSpec(name, k.norm, max(p.eps for p in parts), 0, 0.0, False, 1, parts=tuple(parts))


@contextmanager
def frozen(*modules):
    """Eval mode and no parameter gradients for the duration; both restored afterwards."""
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules if m is not None]
    try:
        for m, _, _ in saved:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield
    finally:
        for m, was_training, flags in saved:
            m.train(was_training)
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)


def start(x0, spec: AttackSpec, lo: float, hi: float, gen: torch.Generator | None, shard=None) -> torch.Tensor:
    """Where a restart begins: a random point of the ball ∩ box, or x0 itself."""
    if not spec.random_start:
        return x0.clone()
    shape = x0.shape

    def draw(fn, dims):  # for the global batch when x0 is one process's rows of it
        return distributed.draw(fn, dims, shard, generator=gen, device=x0.device, dtype=x0.dtype)

    if spec.norm == "linf":
        noise = draw(torch.rand, shape) * 2 - 1
        return (x0 + spec.eps * noise).clamp(lo, hi)
    if spec.norm == "l2":
        v = draw(torch.randn, shape)
    else:  # Laplace directions are uniform on the l1 sphere once normalised
        e = draw(torch.rand, shape).clamp_min(1e-12)
        s = draw(torch.rand, shape)
        v = -torch.log(e) * torch.sign(s - 0.5)
    p = 2 if spec.norm == "l2" else 1
    norms = v.flatten(1).norm(p=p, dim=1).clamp_min(1e-12).view(-1, *([1] * (len(shape) - 1)))
    radius = draw(torch.rand, (shape[0],)).view_as(norms)
    x = x0 + v / norms * spec.eps * radius
    # a zero-gradient step is exactly the projection onto ball ∩ box
    return ops.pgd_step_(x, x0, torch.zeros_like(x), step=0.0, eps=spec.eps, norm=spec.norm, lo=lo, hi=hi,
                         l1_quantile=spec.l1_quantile)


def descend(loss_fn, x: torch.Tensor, x0: torch.Tensor, spec: AttackSpec, lo: float, hi: float) -> torch.Tensor:
    """spec.steps projected-gradient steps from x (overwritten) ascending per-sample `loss_fn`."""
    for _ in range(spec.steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x).sum(), x)
        x = x.detach()
        ops.pgd_step_(x, x0, grad, step=spec.step_size, eps=spec.eps, norm=spec.norm, lo=lo, hi=hi,
                      l1_quantile=spec.l1_quantile)
    return x


def maximize(loss_fn, x0: torch.Tensor, spec: AttackSpec, *, lo: float = 0.0, hi: float = 1.0,
             generator: torch.Generator | None = None, fooled=None, shard=None) -> torch.Tensor:
    """The one projected-gradient loop: maximise per-sample `loss_fn` around x0 within spec's
    ball ∩ [lo, hi]. With several restarts each sample keeps a restart that fools the model
    (`fooled(x)`, per sample) when one does, else the one of highest final loss: the highest loss
    is not always the misclassified point, and an evaluation counts misclassifications."""
    x0 = x0.detach()
    best, best_loss = None, None
    for _ in range(spec.restarts):
        x = descend(loss_fn, start(x0, spec, lo, hi, generator, shard), x0, spec, lo, hi)
        if spec.restarts == 1:
            return x
        with torch.no_grad():
            final = loss_fn(x)
            wins = fooled(x) if fooled is not None else torch.zeros_like(final, dtype=torch.bool)
        if best is None:
            best, best_loss, best_wins = x, final, wins
        else:
            better = (wins & ~best_wins) | ((wins == best_wins) & (final > best_loss))
            best[better], best_loss[better], best_wins[better] = x[better], final[better], wins[better]
    return best


def cross_entropy(model, y):
    """Per-sample loss of the regular attacks."""
    return lambda inp: F.cross_entropy(model(inp), y, reduction="none")


def perturb(model, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, *, cvae=None,
            generator: torch.Generator | None = None, record: dict | None = None, shard=None) -> torch.Tensor:
    """Adversarial images for (x, y) against `model` under `spec` (in [0, 1]).

    shard: (offset, size) when (x, y) are rows of a larger batch spread over processes (the
    random starts are drawn for all `size` rows and sliced, distributed.py); training only.

    record: for a "worst of" composite, gets "first_correct", how many samples its first part
    alone left correctly classified (that attack's own count: one run gives both accuracies);
    for a latent attack, "origin", the reconstructions G_y(I_y(x)) the perturbation starts from."""
    k = spec.kind
    if k.identity:
        return x
    with frozen(model, cvae):
        if k.parts:
            return _worst_of(model, x, y, spec, cvae=cvae, generator=generator, record=record)
        if k.external:
            return external.run(model, x, y, spec.name, spec.norm, spec.eps, generator=generator)
        if k.gradient_free:
            return pointwise(model, x, y, eps=spec.eps, generator=generator, restarts=spec.restarts)[0]
        if k.space == "input":
            return maximize(cross_entropy(model, y), x, spec, lo=0.0, hi=1.0, generator=generator,
                            fooled=lambda inp: model(inp).argmax(1) != y, shard=shard)
        z0, z = latent_search(model, cvae, x, y, spec, generator=generator, shard=shard)
        with torch.no_grad():
            if record is not None:
                record["origin"] = cvae.decode_mean(z0, y)
            return cvae.decode_mean(z, y)


def _part(spec: AttackSpec, name: str) -> AttackSpec:
    """A composite's part: the composite's own budget and schedule for an attack of its norm;
    a gradient-free part keeps its own restarts."""
    k = KINDS[name]
    if k.gradient_free:
        return AttackSpec(name, k.norm, spec.eps, 0, 0.0, False, k.restarts, spec.l1_quantile)
    return replace(spec, name=name)


def _worst_of(model, x, y, spec: AttackSpec, *, cvae, generator, record):
    if spec.parts:
        return _worst_of_all(model, x, y, spec.parts, cvae=cvae, generator=generator, record=record)
    parts = [_part(spec, name) for name in spec.kind.parts]
    x_adv = perturb(model, x, y, parts[0], cvae=cvae, generator=generator)
    for i, part in enumerate(parts[1:]):
        with torch.no_grad():
            left = (model(x_adv).argmax(1) == y).nonzero().squeeze(1)
        if i == 0 and record is not None:
            record["first_correct"] = len(left)
        if not len(left):
            break
        # the generator goes back to where the first part left it, so that the next batch's first
        # part is exactly that attack run alone and the composite fools a superset of it
        state = generator.get_state() if generator is not None else None
        x_part = perturb(model, x[left], y[left], part, cvae=cvae, generator=generator)
        if state is not None:
            generator.set_state(state)
        with torch.no_grad():
            fooled = model(x_part).argmax(1) != y[left]
        x_adv[left[fooled]] = x_part[fooled]
    return x_adv


def _worst_of_all(model, x, y, parts, *, cvae, generator, record):
    """worst:A,B,...: every part runs on the whole batch from the batch's generator as it is (a
    copy each), so each part does exactly what it does alone and the worst case is exactly the
    union of their successes."""
    gens = [_clone(generator) for _ in parts]
    x_adv = x.clone()
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for part, gen in zip(parts, gens):
        x_part = perturb(model, x, y, part, cvae=cvae, generator=gen)
        with torch.no_grad():
            fooled = (model(x_part).argmax(1) != y) & robust
        x_adv[fooled], robust = x_part[fooled], robust & ~fooled
    return x_adv


def _clone(generator: torch.Generator | None) -> torch.Generator | None:
    return None if generator is None else torch.Generator(device=generator.device).set_state(generator.get_state())


def latent_search(model, cvae, x, y, spec: AttackSpec, *, generator=None, shard=None):
    """(z0, z'): the encoding I_y(x) and the latent point the attack moves it to (no box)."""
    if cvae is None:
        raise UsageError(f"attack {spec.name} needs a CVAE (--cvae CVAE.safetensors)")
    with frozen(model, cvae):
        with torch.no_grad():
            z0 = cvae.encode_mean(x, y)
        loss = lambda z: F.cross_entropy(model(cvae.decode_mean(z, y)), y, reduction="none")  # noqa: E731
        fooled = lambda z: model(cvae.decode_mean(z, y)).argmax(1) != y  # noqa: E731
        return z0, maximize(loss, z0, spec, lo=-math.inf, hi=math.inf, generator=generator, fooled=fooled,
                            shard=shard)


def reconstruct(cvae, x, y) -> torch.Tensor:
    """G_y(I_y(x)): the clean reconstruction the latent attack starts from."""
    with frozen(cvae), torch.no_grad():
        return cvae.decode_mean(cvae.encode_mean(x, y), y)


def with_overrides(spec: AttackSpec, **kw) -> AttackSpec:
    return replace(spec, **{k: v for k, v in kw.items() if v is not None})
