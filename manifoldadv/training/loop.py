"""ONE training loop for every mode. What differs between modes is data: which attacks make
the training examples (`MODES`), how their losses combine (`avg` or `max`, Tramer & Boneh
2019), or, for `cvae`, a different objective plugged into the same loop.

Modes: std (clean), fgsm, pgd (linf), l2, l1, joint-lp (l1 + linf), vae (latent-space
adversarial training), joint (PGD + VAE), cvae (train the conditional VAE itself).
From epoch `adv_start` on the loss is (1 - w) * CE(adversarial) + w * CE(clean) with
w = `clean_weight`: 0 (adversarial examples only, Madry et al.) for every mode but `fgsm`,
where it is 0.5 (Goodfellow et al. 2014). The regular attacks' eps and step size ramp up over
the first `eps_warmup` adversarial epochs. NOTES.md says why for both.

Determinism and resumption: the data order and the attacks' random starts of epoch e come
from generators seeded with (seed, e), and every epoch ends with an atomic checkpoint that
includes the optimizer state, so `--resume` after a kill continues exactly where the last
finished epoch left off (at most the epoch in progress is lost).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..runtime import accel, console, distributed, outputs
from .. import checkpoint, models
from ..attacks import graphed
from ..data import loader
from ..attacks import KINDS, AttackSpec, spec_for
from ..config import Schedule, defaults
from ..data import Dataset, Split
from ..errors import CheckpointError, TrainingError, UsageError
from ..evaluation import make_generator
from .objectives import ClassifierObjective, CVAEObjective, Elbo
from ..runtime import derive_seed, versions

MODES: dict[str, tuple[str, ...]] = {
    "std": (),
    "fgsm": ("fgsm",),
    "pgd": ("pgd",),
    "l2": ("l2",),
    "l1": ("l1",),
    "joint-lp": ("l1", "pgd"),
    "vae": ("vae",),
    "joint": ("pgd", "vae"),
    "cvae": (),
}
STRATEGIES = ("avg", "max")
DEFAULT_CLEAN_WEIGHT = {"fgsm": 0.5}  # Goodfellow et al.'s alpha (NOTES.md: label leaking)


def needs_cvae(mode: str) -> bool:
    return any(KINDS[a].space == "latent" for a in MODES.get(mode, ()))


@dataclass
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

    def specs(self) -> list[AttackSpec]:
        return [AttackSpec(**{k: v for k, v in a.items() if k != "space"}) for a in self.attacks]


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
) -> TrainConfig:
    """The paper's defaults for (data, mode), with every given override applied.

    budgets: the attacks' eps by norm, {"linf", "l2", "l1", "latent"} (a missing or None one:
    the data set's default)."""
    data = str(getattr(data, "value", data))
    precision = accel.check_precision(precision)
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "cvae" and precision != "fp32":
        raise UsageError("--precision applies to classifiers; mode cvae trains the CVAE in fp32")
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy must be avg or max, got {strategy!r}")
    d = defaults(data)
    _check_positive(epochs=epochs, batch_size=batch_size, lr=lr, latent=latent)
    if weight_decay is not None and not weight_decay >= 0:
        raise UsageError(f"--weight-decay must be >= 0, got {weight_decay}")
    if mode == "cvae":
        cd = d.cvae
        model = _given(model, cd.model)
        if models.spec(model).kind != "cvae":
            raise UsageError(f"mode cvae needs a CVAE model ({', '.join(models.available('cvae'))}), got {model!r}")
        return TrainConfig(
            data=data, mode=mode, model=model, epochs=_given(epochs, cd.epochs), adv_start=0,
            batch_size=_given(batch_size, cd.batch_size), lr=_given(lr, cd.lr),
            weight_decay=_given(weight_decay, 0.0), seed=seed, limit=limit, augment=False,
            model_kwargs={"latent": _given(latent, cd.latent), **cd.extra},
        )
    model = _given(model, d.model)
    if models.spec(model).kind != "classifier":
        raise UsageError(f"mode {mode} trains a classifier; {model!r} is a {models.spec(model).kind}")
    specs = [spec_for(name, data, train=True, budgets=budgets, steps=steps, step_size=step_size).as_dict()
             for name in MODES[mode]]
    clean_weight = DEFAULT_CLEAN_WEIGHT.get(mode, 0.0) if clean_weight is None else clean_weight
    if not 0.0 <= clean_weight < 1.0:
        raise UsageError(f"--clean-weight must be in [0, 1), got {clean_weight}")
    epochs = _given(epochs, d.epochs)
    if adv_start is not None and adv_start < 0:
        raise UsageError(f"--adv-start must be >= 0, got {adv_start}")
    if specs:  # an adversarial mode must train at least one adversarial epoch
        start = _given(adv_start, d.adv_start)
        if start >= epochs:
            given = f"--adv-start {start}" if adv_start is not None else f"the default --adv-start {start} ({data})"
            raise UsageError(f"mode {mode}: {given} leaves no adversarial epoch in {epochs} epoch"
                             f"{'s' if epochs != 1 else ''}; give --adv-start below {epochs}")
        adv_start = start
    else:
        adv_start = min(_given(adv_start, d.adv_start), epochs)
    has_regular = any(a["space"] == "input" for a in specs)
    adversarial_epochs = epochs - adv_start if specs else 0
    if eps_warmup is None:  # the default ramp never outlasts the adversarial epochs
        eps_warmup = min(d.eps_warmup, adversarial_epochs) if has_regular else 0
    elif eps_warmup < 0:
        raise UsageError(f"--eps-warmup must be >= 0, got {eps_warmup}")
    elif has_regular and eps_warmup > adversarial_epochs:
        raise UsageError(f"--eps-warmup {eps_warmup} is longer than the {adversarial_epochs} adversarial epoch"
                         f"{'s' if adversarial_epochs != 1 else ''}: eps would never reach its target")
    return TrainConfig(
        data=data, mode=mode, model=model, epochs=epochs, adv_start=adv_start,
        batch_size=_given(batch_size, d.batch_size), lr=_given(lr, d.lr),
        weight_decay=_given(weight_decay, d.weight_decay),
        seed=seed, limit=limit, augment=d.augment if augment is None else augment,
        strategy=strategy, clean_weight=clean_weight, eps_warmup=eps_warmup, attacks=specs, cvae=cvae,
        precision=precision,
    )


def all_finite(model: torch.nn.Module) -> bool:
    """Every floating-point parameter and buffer finite (one device read)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


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


def default_out(data: str, mode: str, run_dir: str | Path = "runs") -> Path:
    return Path(run_dir) / f"{data}-{mode}.safetensors"


def epoch_seed(seed: int, epoch: int) -> int:
    return derive_seed(seed, epoch, 17)


def _meta(cfg: TrainConfig, dataset: Dataset, model_kind: str, epoch: int, history: list, metrics: dict,
          model_kwargs: dict) -> dict:
    meta = {
        "kind": model_kind,
        "model": cfg.model,
        "model_kwargs": model_kwargs,
        "in_shape": list(dataset.shape),
        "num_classes": dataset.num_classes,
        "dataset": cfg.data,
        "n_train": len(dataset.train),  # what training really saw (the limit, or the whole set)
        "n_test": len(dataset.test),
        "mode": cfg.mode,
        "hparams": asdict(cfg),
        "epoch": epoch,
        "epochs": cfg.epochs,
        "complete": epoch >= cfg.epochs,
        "seed": cfg.seed,
        "versions": versions(),
        "history": history,
    }
    if model_kind == "classifier":
        meta.update(mean=list(dataset.mean), std=list(dataset.std))
    meta.update(metrics)
    return meta


_MUST_MATCH = ("data", "mode", "model", "epochs", "adv_start", "batch_size", "lr", "weight_decay", "seed",
               "limit", "augment", "strategy", "clean_weight", "eps_warmup", "attacks", "model_kwargs", "precision")
_ADDED_LATER = {"clean_weight": 0.0, "eps_warmup": 0, "precision": "fp32"}  # what a checkpoint without the field used
_UNRECORDED_OK = ("cvae_sha256",)  # checked when the checkpoint records it (older ones do not)


def mismatched(old_hparams: dict, cfg: TrainConfig) -> list[str]:
    """Settings in which a checkpoint's recorded hyper-parameters differ from `cfg`
    (a checkpoint from before a setting existed counts as having that setting's default 0)."""
    new = asdict(cfg)
    stale = [k for k in _MUST_MATCH if old_hparams.get(k, _ADDED_LATER.get(k, new[k])) != new[k]]
    return stale + [k for k in _UNRECORDED_OK if old_hparams.get(k) not in (None, new[k])]


def ensure_trained(cfg: TrainConfig, dataset: Dataset, *, device, out, cvae=None, compile: bool | None = None,
                   sync_bn: bool = False) -> bool:
    """`out` trained per `cfg`: kept when complete with these settings, resumed when half-trained,
    trained when missing; a checkpoint made with other settings is refused. True if it trained."""
    out = Path(out)
    if out.exists():
        meta = checkpoint.load(out).meta
        stale = mismatched(meta.get("hparams", {}), cfg)
        if stale:
            raise UsageError(f"{out} was trained with other settings ({', '.join(stale)}); move it away or "
                             f"choose another output")
        if meta.get("complete"):
            return False
    console.log(f"training {cfg.mode} ({cfg.model}, {len(dataset.train)} examples) -> {out}")
    train(cfg, dataset, device=device, out=out, resume=out.exists(), cvae=cvae, compile=compile, sync_bn=sync_bn)
    return True


def train(cfg: TrainConfig, dataset: Dataset, *, device, out: Path, resume: bool = False, force: bool = False,
          cvae=None, compile: bool | None = None, sync_bn: bool = False, attack_graphs: bool | None = None) -> dict:
    """Train per `cfg`, checkpointing into `out` after every epoch; returns the final metadata.

    compile: torch.compile the classifier (None: the device's default, see accel.py).
    attack_graphs: replay each regular training attack as one CUDA graph (graphed.py; None: the
    default, accel.resolve_attack_graphs).
    With several processes (distributed.py) the outer loss goes through DistributedDataParallel
    and the attacks through the bare model; sync_bn: BatchNorm statistics over the global batch."""
    out = check_out(out, resume=resume, force=force)
    device = torch.device(device)
    world = distributed.world()
    attack_graphs = accel.resolve_attack_graphs(attack_graphs, device)
    if attack_graphs:
        graphed.require(device, cfg.mode)
    objective = CVAEObjective() if cfg.mode == "cvae" else ClassifierObjective(cfg, cvae)
    if needs_cvae(cfg.mode) and cvae is None:
        raise UsageError(f"mode {cfg.mode} needs a CVAE (--cvae)")
    if objective.kind == "cvae" and compile:
        raise UsageError("--compile applies to classifiers; mode cvae trains the CVAE eagerly")
    if world > 1 and compile:
        raise UsageError("--compile is not supported with several processes (torchrun) yet")
    if cfg.batch_size < world:
        raise UsageError(f"--batch-size {cfg.batch_size} is smaller than the {world} processes it is split over")
    compiled = objective.kind == "classifier" and world == 1 and accel.resolve_compile(compile, device, "train")
    torch.manual_seed(cfg.seed)
    model = models.create(cfg.model, in_shape=dataset.shape, num_classes=dataset.num_classes,
                          mean=dataset.mean, std=dataset.std, **cfg.model_kwargs).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history, finished, ck = 0, [], None, None
    if out.exists() and resume:
        ck = checkpoint.load(out, kind=objective.kind)
        mismatch = mismatched(ck.meta.get("hparams", {}), cfg)
        if mismatch:
            raise CheckpointError(f"{out} was trained with different settings ({', '.join(mismatch)}); "
                                  f"use another --out, or drop --resume and pass --force to start over")
        finished = ck.meta if ck.meta.get("complete") else None
    if world > 1:
        _same_start_everywhere(out, int(ck.meta["epoch"]) if ck is not None else 0, device)
    if finished is not None:
        console.log(f"{out}: already trained ({finished['epoch']} epochs), nothing to do")
        return finished
    if ck is not None:
        try:
            model.load_state_dict(ck.state_dict())
            opt_state = ck.optimizer_state()
            if opt_state is not None:
                opt.load_state_dict(opt_state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{out}: its weights or optimizer state do not fit {cfg.model} ({first})") from None
        start, history = int(ck.meta["epoch"]), list(ck.meta.get("history", []))
        console.log(f"{out}: resuming at epoch {start + 1}/{cfg.epochs}")

    net = model
    if objective.kind == "classifier":
        net = accel.prepare(model, precision=cfg.precision, compile=compiled, device=device)
        objective.graphs = graphed.AttackGraphs(model) if attack_graphs else None
    outer = _outer(model, objective, device, sync_bn) if world > 1 else None
    train_split, test_split = loader.place(dataset.train, device), loader.place(dataset.test, device)
    meta = None
    with console.progress() as bar:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            adversarial = cfg.mode != "cvae" and bool(cfg.attacks) and epoch >= cfg.adv_start
            tag = "adv" if adversarial else ("cvae" if cfg.mode == "cvae" else "clean")
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs} [{tag}]", total=len(train_split), status="")
            kept = (f"epoch {epoch} is saved in {out}; rerun with --resume to continue from it" if epoch else
                    f"nothing of {out} is saved yet")
            with console.doing(f"in epoch {epoch + 1}/{cfg.epochs} of training {out}", kept):
                train_loss, train_accuracy = train_epoch(net, opt, objective, train_split, cfg, epoch, device,
                                                         outer=outer, bar=bar, task=task)
            bar.remove_task(task)
            if not (math.isfinite(train_loss) and all_finite(model)):
                last = f"epoch {epoch} in {out} is the last finite checkpoint" if epoch else "nothing was saved"
                what = f"the mean loss is {train_loss}" if not math.isfinite(train_loss) else "the weights are not finite"
                raise TrainingError(f"training diverged in epoch {epoch + 1}/{cfg.epochs}: {what}; {last}; "
                                    f"try a lower --lr (now {cfg.lr:g})")
            metrics = objective.evaluate(model, test_split, device)
            record = {"epoch": epoch + 1, "adversarial": adversarial, "train_loss": train_loss,
                      "seconds": round(time.perf_counter() - t0, 2), **metrics}
            if train_accuracy is not None:
                record["train_accuracy"] = train_accuracy
            history.append(record)
            meta = _meta(cfg, dataset, objective.kind, epoch + 1, history, metrics, cfg.model_kwargs)
            meta.update(accel.record(cfg.precision, compiled), world_size=world, sync_bn=bool(sync_bn and world > 1),
                        attack_graphs=bool(attack_graphs))
            with console.doing(f"while saving epoch {epoch + 1} to {out}",
                               f"{out} holds epoch {epoch} or {epoch + 1}, whole; rerun with --resume"):
                checkpoint.save(out, model, meta, opt)
            shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                              if k not in ("epoch", "adversarial"))
            console.log(f"epoch {epoch + 1}/{cfg.epochs} [{tag}]  {shown}")
    if meta is None:  # zero epochs left to run
        meta = checkpoint.load(out).meta
    return meta


def _same_start_everywhere(out: Path, epoch: int, device) -> None:
    """Every process resumes from the same epoch (each reads `out` itself: on several machines it
    must be on a file system they share)."""
    mine = torch.tensor([epoch], dtype=torch.int64, device=device)
    seen = [int(t) for t in distributed.all_gather(mine)]
    if len(set(seen)) > 1:
        raise CheckpointError(f"the processes of this run found {out} at different epochs ({', '.join(map(str, seen))} "
                              f"by rank); with several machines --out must be on a file system they all share")


def _outer(model, objective, device, sync_bn: bool):
    """The module the outer loss goes through with several processes: DistributedDataParallel
    around the model (the CVAE: around its -ELBO), without the buffer broadcast of every forward
    (BatchNorm's running statistics are the same on every rank, or synchronised with sync_bn)."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        console.log("BatchNorm statistics come from each process's part of the batch: results differ from one "
                    "process's (--sync-bn computes them over the whole batch)")
    inner = Elbo(model) if objective.kind == "cvae" else model
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.13 names the per-forward broadcast forward_sync_buffers
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(inner, device_ids=ids, **no_sync)


def train_epoch(net, opt, objective, split: Split, cfg: TrainConfig, epoch: int, device, *, outer=None, bar=None,
                task=None, max_batches: int | None = None) -> tuple[float, float | None]:
    """One epoch of `objective` over the placed `split`: (mean training loss, accuracy on the
    training examples, None for the CVAE). The data order, augmentation draws and attack random
    starts come from generators seeded with (seed, epoch). With several processes each takes its
    part of every batch (loader.parts) and the sums add up at the end. max_batches: stop early
    (benchmarks)."""
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    attack_gen = make_generator(device, epoch_seed(cfg.seed, epoch) + 1)
    n = len(split)
    order = torch.randperm(n, generator=gen)
    crops = loader.draw_crops(gen, n, cfg.batch_size) if cfg.augment else None
    if max_batches is not None:
        order = order[:max_batches * cfg.batch_size]
        crops = crops[:len(order)] if crops is not None else None
    clock = console.StatusClock(bar) if bar is not None else None
    net.train()
    # running sums stay on the device: the loop never waits for it (see StatusClock)
    tot_loss = torch.zeros((), dtype=torch.float64, device=device)
    tot_correct = torch.zeros((), dtype=torch.float64, device=device)
    done, world = 0, distributed.world()
    for x, y, done, shard in loader.parts(split, cfg.batch_size, device, order=order, crops=crops):
        accel.mark_step(net)
        loss, correct = objective.loss(net, x, y, epoch, attack_gen, progress=done / n, outer=outer,
                                       shard=shard if world > 1 else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot_loss += loss.detach().double() * (shard[1] / world)  # this process's sum of losses
        if correct is not None:
            tot_correct += correct
        if bar is not None:
            bar.update(task, advance=shard[1])
            if clock.due():
                bar.update(task, status=f"loss {float(tot_loss) * world / done:.4f}")
    tot = distributed.all_reduce_(torch.stack([tot_loss, tot_correct]))
    done = max(done, 1)
    return float(tot[0]) / done, (float(tot[1]) / done if objective.kind == "classifier" else None)
