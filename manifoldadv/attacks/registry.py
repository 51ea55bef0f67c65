"""The attack registry: what each attack name is (`AttackKind`, `KINDS`) and what one run of it
is (`AttackSpec`: norm, budget, steps, step size), with the data sets' defaults filled in. Every
rule about which options an attack takes lives here; the CLI's choices and the study follow it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace

from .pointwise import VERSION as POINTWISE_VERSION
from ..config import defaults
from ..errors import UsageError

@dataclass(frozen=True)
class AttackKind:
    """What kind of attack a name is: the one place each rule about attacks lives.

    space: "input" (pixels in [0, 1]) or "latent" (a CVAE's latent, no box).
    subspace: an input-space attack whose perturbation lies in its example's class eigenspace
      span(U_y) ("on", on-manifold) or is orthogonal to it ("off"); eigen.py. "": unrestricted.
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
    subspace: str = ""
    one_step: bool = False
    gradient_free: bool = False
    restarts: int = 1
    parts: tuple[str, ...] = ()
    first_reported_as: str | None = None
    identity: bool = False
    external: bool = False

    @property
    def budget(self) -> str:
        """Which eps option sets its budget: the norm's, "latent", or "eigen" (the l2 eigenspace
        attacks, on and off the manifold at the same budget)."""
        if self.space == "latent":
            return "latent"
        return "eigen" if self.subspace and self.norm == "l2" else self.norm

    @property
    def regular(self) -> bool:
        """A regular attack: unrestricted in input space (off the manifold by default)."""
        return self.space == "input" and not (self.subspace or self.identity)

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
    AttackKind("eigen", "l2", subspace="on"),
    AttackKind("eigen-off", "linf", subspace="off"),
    AttackKind("eigen-off-l2", "l2", subspace="off"),
    AttackKind("autoattack", "linf", external=True),
    AttackKind("autoattack-l2", "l2", external=True),
    AttackKind("autoattack-l1", "l1", external=True),
    AttackKind("apgd-ce", "linf", external=True),
    AttackKind("apgd-t", "linf", external=True),
    AttackKind("square", "linf", external=True),
)}
WORST = "worst:"  # worst:A,B,... is the per-example worst case of attacks A, B, ...
REGULAR = tuple(n for n, k in KINDS.items() if k.regular)
LATENT = tuple(n for n, k in KINDS.items() if k.space == "latent")
EIGEN = tuple(n for n, k in KINDS.items() if k.subspace)
ATTACKS = tuple(KINDS)
NORM_OF = {n: k.norm for n, k in KINDS.items() if not k.identity}


def kind(name: str) -> AttackKind:
    if not isinstance(name, str):
        raise UsageError(f"an attack name is a string, got {name!r}")
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
    subspaces = {KINDS[p].subspace for p in parts}
    return AttackKind(name, norms.pop() if len(norms) == 1 else "mixed", "latent" if latent else "input",
                      subspace=subspaces.pop() if len(subspaces) == 1 else "mixed", parts=parts)


def needs(name: str) -> set[str]:
    """What an attack needs besides the model: "cvae" (a latent attack), "basis" (an eigenspace one)."""
    k = kind(name)
    parts = [KINDS[p] for p in k.parts] if k.parts else [k]
    return {"cvae" for p in parts if p.space == "latent"} | {"basis" for p in parts if p.subspace}


BUDGETS = ("linf", "l2", "l1", "latent", "eigen")


def eps_option(name: str, **budgets):
    """Which of the eps options {linf, l2, l1, latent, eigen} (None: the data set's default) sets
    attack `name`'s budget."""
    return budgets.get(kind(name).budget)


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

    @property
    def random(self) -> bool:
        """Whether its result depends on the evaluation seed: a random start, pointwise's random
        order, AutoAttack's own draws. A one-step attack from x (FGSM, the latent FGSM) does not."""
        if self.parts:
            return any(p.random for p in self.parts)
        return self.random_start or self.kind.gradient_free or self.kind.external

    def as_dict(self) -> dict:
        d = asdict(self)
        d["space"] = self.space
        if self.kind.subspace:
            d["subspace"] = self.kind.subspace
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
    budget += {"on": " in the class eigenspace", "off": " orthogonal to the class eigenspace"}.get(k.subspace, "")
    if k.gradient_free:  # restarts, no steps
        return f"{name} ({budget}, gradient-free, {spec['restarts']} restarts)"
    steps = f"{spec['steps']} step{'' if spec['steps'] == 1 else 's'}"
    if step_size:
        steps += f" of {spec['step_size']:.4g}"
    extra = "".join(f" + {p} on what {k.parts[0] if k.parts[0] != 'l1' else 'SLIDE'} leaves" for p in k.parts[1:])
    restarts = f", {spec['restarts']} restarts" if spec.get("restarts", 1) > 1 else ""
    return f"{name} ({budget}, {steps}{restarts}{extra})"


# far beyond any attack in the literature (AutoAttack: 100 iterations, 5000 queries); a larger value
# is a typo that would run for days
MAX_STEPS = 100_000
MAX_RESTARTS = 1_000


def _number(name: str, attack: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise UsageError(f"attack {attack}: {name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _count(name: str, attack: str, v, most: int) -> int:
    # the range first: it turns away nan and inf before int() could raise on them
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= most or v != int(v):
        raise UsageError(f"attack {attack}: {name} must be a whole number from 1 to {most}, got {v!r}")
    return int(v)


# the option that sets each budget (AttackKind.budget), in every command
BUDGET_OPTIONS = {"linf": "--eps", "l2": "--l2-eps", "l1": "--l1-eps", "latent": "--latent-eps", "eigen": "--eigen-eps"}


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
    restarts = _count("restarts", name, k.restarts if restarts is None else restarts, MAX_RESTARTS)
    d = defaults(dataset)
    if eps is None:
        by_budget = {"latent": d.latent_eps, "eigen": d.eigen.eps}
        eps = by_budget[k.budget] if k.budget in by_budget else (d.train_eps if train else d.test_eps).get(k.norm)
        if eps is None:  # a data set from outside has no default budgets
            raise UsageError(f"data set {dataset} has no default budget for {name}: give it with "
                             f"{BUDGET_OPTIONS[k.budget]}")
    eps = _number("eps", name, eps)
    if k.one_step:
        return AttackSpec(name, k.norm, float(eps), 1, float(eps), False, 1)
    if k.external:
        return AttackSpec(name, k.norm, float(eps), 0, 0.0, False, 1)
    if k.gradient_free:
        return AttackSpec(name, k.norm, float(eps), 0, 0.0, False, int(restarts))
    if steps is None:
        steps = {"latent": d.latent_steps, "eigen": d.eigen.steps}.get(k.budget, d.steps)
    steps = _count("steps", name, steps, MAX_STEPS)
    if step_size is None:
        step_size = d.eigen.step_ratio * eps if k.budget == "eigen" else default_step_size(eps, steps)
    step_size = _number("step_size", name, step_size)
    rs = True if random_start is None else random_start
    return AttackSpec(name, k.norm, float(eps), int(steps), float(step_size), rs, int(restarts))


def spec_for(name: str, dataset: str, *, budgets: dict | None = None, steps=None, step_size=None, restarts=None,
             **kw) -> AttackSpec:
    """make_spec with a run's options: the eps of the attack's budget from `budgets` (BUDGETS:
    None or missing is the default), and steps, step size and restarts for the
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



def with_overrides(spec: AttackSpec, **kw) -> AttackSpec:
    return replace(spec, **{k: v for k, v in kw.items() if v is not None})
