"""One training run's settings, resolved once: `resolve_config` turns the paper's defaults for a
(data set, mode) and the user's overrides into a frozen `TrainConfig` of plain values, validated
here and nowhere else. The checkpoint's file name and the identity a checkpoint must match to be
resumed or reused come from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import models
from ..attacks import KINDS, AttackSpec, spec_for
from ..config import Schedule, defaults
from ..errors import UsageError
from ..runtime import accel, outputs
from .modes import CVAE, ModeKind, mode as mode_kind

# what a checkpoint must have been trained with to be resumed or reused (the CVAE by content)
IDENTITY = ("data", "mode", "model", "epochs", "adv_start", "batch_size", "lr", "weight_decay", "seed", "limit",
            "augment", "strategy", "clean_weight", "eps_warmup", "attacks", "model_kwargs", "precision", "cvae_sha256",
            "eigen_k", "basis_digest")


@dataclass(frozen=True)
class TrainConfig(Schedule):
    data: str
    mode: str
    seed: int = 0
    limit: int | None = None
    augment: bool = False
    strategy: str = "avg"
    clean_weight: float = 0.0  # weight of the clean loss once adversarial training starts
    eps_warmup: int = 0  # adversarial epochs over which regular attacks' eps ramps up
    attacks: list = field(default_factory=list)  # AttackSpec dicts used for training examples
    model_kwargs: dict = field(default_factory=dict)
    cvae: str | None = None
    precision: str = "fp32"  # of the classifier's forwards (accel.py)
    cvae_sha256: str | None = None  # checkpoint.digest of the CVAE the latent attacks use
    eigen_k: int | None = None  # the eigenspace attacks' k (modes that need the class eigenbasis)
    basis_digest: str | None = None  # eigenbasis.split_digest of the split the basis came from

    @property
    def kind(self) -> ModeKind:
        return mode_kind(self.mode)

    def specs(self) -> list[AttackSpec]:
        return [AttackSpec(**{k: v for k, v in a.items() if k not in ("space", "subspace")}) for a in self.attacks]

    def checkpoint_path(self, run_dir: str | Path = "runs") -> Path:
        return Path(run_dir) / self.kind.checkpoint_name(self.data, self.strategy)

    def identity(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in IDENTITY}

    def cache_key(self) -> str:
        return outputs.cache_key(self.identity())

    def with_cvae(self, path: str | Path, sha256: str) -> "TrainConfig":
        return replace(self, cvae=str(path), cvae_sha256=sha256)

    def with_basis(self, basis) -> "TrainConfig":
        return replace(self, eigen_k=basis.k, basis_digest=basis.digest)


def mismatched(old_hparams: dict, cfg: TrainConfig) -> list[str]:
    """The settings in which a checkpoint's recorded hyper-parameters differ from `cfg`."""
    new = cfg.identity()
    return [k for k in IDENTITY if old_hparams.get(k) != new[k]]


def resolve_config(
    data: str,
    mode: str,
    *,
    model: str | None = None,
    epochs: int | None = None,
    adv_start: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    budgets: dict | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    strategy: str = "avg",
    clean_weight: float | None = None,
    eps_warmup: int | None = None,
    augment: bool | None = None,
    latent: int | None = None,
    seed: int = 0,
    limit: int | None = None,
    cvae: str | None = None,
    precision: str = "fp32",
    eigen_k: int | None = None,
) -> TrainConfig:
    """The paper's defaults for (data, mode), with every given override applied.

    budgets: the attacks' eps by budget (attacks.BUDGETS: a missing or None one, the data set's
    default). eigen_k: the eigenspace of a mode that needs one (default: the data set's)."""
    precision = accel.check_precision(precision)
    m = mode_kind(mode)
    if m.generator and precision != "fp32":
        raise UsageError(f"--precision applies to classifiers; mode {m.name} trains the CVAE in fp32")
    strategy = m.strategy(strategy)
    d = defaults(data)
    _check_positive(epochs=epochs, batch_size=batch_size, lr=lr, latent=latent)
    if weight_decay is not None and not weight_decay >= 0:
        raise UsageError(f"--weight-decay must be >= 0, got {weight_decay}")
    if m.generator:
        cd = d.cvae
        model = _given(model, cd.model)
        if models.spec(model).kind != "cvae":
            raise UsageError(f"mode {m.name} needs a CVAE model ({', '.join(models.available('cvae'))}), got {model!r}")
        # the data set's CVAE takes its settings from config.py; another generator its builder's defaults
        kwargs = ({"latent": _given(latent, cd.latent), **cd.extra} if model == cd.model else
                  {**models.default_kwargs(model), "latent": _given(latent, models.default_kwargs(model)["latent"])})
        closed = models.spec(model).closed_form
        if closed and epochs not in (None, 1):
            raise UsageError(f"{model} is fitted in closed form in one pass; --epochs does not apply")
        return TrainConfig(
            data=data, mode=m.name, model=model, epochs=1 if closed else _given(epochs, cd.epochs), adv_start=0,
            batch_size=_given(batch_size, cd.batch_size), lr=_given(lr, cd.lr),
            weight_decay=_given(weight_decay, 0.0), seed=seed, limit=limit, augment=False,
            model_kwargs=kwargs,
        )
    model = _given(model, d.model)
    if models.spec(model).kind != "classifier":
        raise UsageError(f"mode {m.name} trains a classifier; {model!r} is a {models.spec(model).kind}")
    # --steps and --step-size set the regular attacks' (PGD's); the others keep their own schedules
    specs = [spec_for(name, data, train=True, budgets=budgets, **({"steps": steps, "step_size": step_size}
                                                                   if KINDS[name].regular else {})).as_dict()
             for name in m.attacks]
    clean_weight = m.clean_weight if clean_weight is None else clean_weight
    if not 0.0 <= clean_weight < 1.0:
        raise UsageError(f"--clean-weight must be in [0, 1), got {clean_weight}")
    epochs = _given(epochs, d.epochs)
    if adv_start is not None and adv_start < 0:
        raise UsageError(f"--adv-start must be >= 0, got {adv_start}")
    if m.adversarial:  # an adversarial mode must train at least one adversarial epoch
        start = _given(adv_start, d.adv_start)
        if start >= epochs:
            given = f"--adv-start {start}" if adv_start is not None else f"the default --adv-start {start} ({data})"
            raise UsageError(f"mode {m.name}: {given} leaves no adversarial epoch in {epochs} epoch"
                             f"{'s' if epochs != 1 else ''}; give --adv-start below {epochs}")
        adv_start = start
    else:
        adv_start = min(_given(adv_start, d.adv_start), epochs)
    adversarial_epochs = epochs - adv_start if m.adversarial else 0
    if eps_warmup is None:  # the default ramp never outlasts the adversarial epochs
        eps_warmup = min(d.eps_warmup, adversarial_epochs) if m.regular else 0
    elif eps_warmup < 0:
        raise UsageError(f"--eps-warmup must be >= 0, got {eps_warmup}")
    elif m.regular and eps_warmup > adversarial_epochs:
        raise UsageError(f"--eps-warmup {eps_warmup} is longer than the {adversarial_epochs} adversarial epoch"
                         f"{'s' if adversarial_epochs != 1 else ''}: eps would never reach its target")
    if eigen_k is not None and not m.needs_basis:
        raise UsageError(f"--k sizes the class eigenspace of the eigenspace attacks; mode {m.name} has none")
    if eigen_k is not None and (isinstance(eigen_k, bool) or not isinstance(eigen_k, int) or eigen_k < 1):
        raise UsageError(f"--k must be a whole number >= 1, got {eigen_k!r}")
    return TrainConfig(
        data=data, mode=m.name, model=model, epochs=epochs, adv_start=adv_start,
        batch_size=_given(batch_size, d.batch_size), lr=_given(lr, d.lr),
        weight_decay=_given(weight_decay, d.weight_decay),
        seed=seed, limit=limit, augment=d.augment if augment is None else augment,
        strategy=strategy, clean_weight=clean_weight, eps_warmup=eps_warmup, attacks=specs, cvae=cvae,
        precision=precision, eigen_k=(d.eigen.k if eigen_k is None else eigen_k) if m.needs_basis else None,
    )


def cvae_config(cfg: TrainConfig) -> TrainConfig:
    """The CVAE a latent mode's run trains first when none is given: same data, seed and limit."""
    return resolve_config(cfg.data, CVAE, seed=cfg.seed, limit=cfg.limit)


def default_cvae_path(cfg: TrainConfig, out) -> Path:
    """Where that CVAE lives: beside the run's checkpoint `out`, under the study's name for it."""
    return cvae_config(cfg).checkpoint_path(Path(out).parent)


def check_out(out, *, resume: bool, force: bool) -> Path:
    """The checkpoint path, refused before any work when it cannot be written or when it exists
    and neither --resume nor --force says what to do with it."""
    out = outputs.check_file(out, "checkpoint")
    if resume and force:
        raise UsageError(f"--resume continues {out} and --force starts it over: give one of them")
    if out.exists() and not (resume or force):
        raise UsageError(f"{out} exists; pass --resume to continue it or --force to overwrite it")
    return out


def _given(value, default):
    """The user's value when there is one (0 included), else the default."""
    return default if value is None else value


def _check_positive(**values) -> None:
    for name, v in values.items():
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {v}")
