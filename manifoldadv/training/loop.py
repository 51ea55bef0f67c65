"""ONE training loop for every mode. What differs between modes is data (modes.py): which
attacks make the training examples, how their losses combine (`avg` or `max`), or, for the
CVAE, a different objective plugged into the same loop.

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
from dataclasses import asdict
from pathlib import Path

import torch

from .. import checkpoint, models
from ..data.external import describe as describe_data
from ..attacks import graphed
from ..data import Dataset, Split, loader
from ..errors import CheckpointError, TrainingError, UsageError
from ..evaluation import make_generator
from ..runtime import accel, console, derive_seed, distributed, versions
from .config import TrainConfig, check_out, cvae_config, default_cvae_path, mismatched
from .objectives import ClassifierObjective, CVAEObjective, Elbo


def all_finite(model: torch.nn.Module) -> bool:
    """Every floating-point parameter and buffer finite (one device read)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


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
        "data": describe_data(dataset),
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


def ensure_trained(cfg: TrainConfig, dataset: Dataset, *, device, out, cvae=None, basis=None,
                   compile: bool | None = None, sync_bn: bool = False) -> bool:
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
    train(cfg, dataset, device=device, out=out, resume=out.exists(), cvae=cvae, basis=basis, compile=compile,
          sync_bn=sync_bn)
    return True


def with_cvae(cfg: TrainConfig, dataset: Dataset, *, device, out, cvae=None) -> tuple[TrainConfig, object]:
    """(cfg with its CVAE recorded, the CVAE model) for a mode whose attacks need one: `cvae`
    when given, else <out's folder>/<checkpoint name of the data set's CVAE>, trained there
    first on the same data (seed and limit included) unless it is complete already. A mode
    without latent attacks: (cfg, None)."""
    if not cfg.kind.needs_cvae:
        return cfg, None
    path = Path(cvae) if cvae is not None else default_cvae_path(cfg, out)
    if cvae is None:
        if not path.exists():
            console.log(f"no --cvae given and {path} does not exist: training a CVAE first")
        if not ensure_trained(cvae_config(cfg), dataset, device=device, out=path):
            console.log(f"using CVAE {path}")
    model, _ = checkpoint.load_model(path, kind="cvae", device=device, dataset=cfg.data)
    model.eval()
    return cfg.with_cvae(path, checkpoint.digest(path)), model


def with_basis(cfg: TrainConfig, dataset: Dataset, *, out, path=None, device="cpu") -> tuple[TrainConfig, object]:
    """(cfg with its eigenbasis recorded, the basis) for a mode whose attacks need one: read from
    `path`, or from beside `out`, when it is this training split's with cfg's k, else computed
    and written there. A mode without eigenspace attacks: (cfg, None)."""
    if not cfg.kind.needs_basis:
        return cfg, None
    from ..evaluation import eigenbasis

    basis = eigenbasis.obtain(dataset.train, dataset.num_classes, cfg.eigen_k, dataset=cfg.data, path=path,
                              cache_dir=Path(out).parent, device=device)
    return cfg.with_basis(basis), basis


def train(cfg: TrainConfig, dataset: Dataset, *, device, out: Path, resume: bool = False, force: bool = False,
          cvae=None, basis=None, compile: bool | None = None, sync_bn: bool = False,
          attack_graphs: bool | None = None) -> dict:
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
        graphed.require(device, cfg.kind)
    objective = CVAEObjective() if cfg.kind.generator else ClassifierObjective(cfg, cvae, basis=basis)
    if cfg.kind.needs_cvae and cvae is None:
        raise UsageError(f"mode {cfg.mode} needs a CVAE (--cvae)")
    if cfg.kind.needs_basis and (basis is None or (basis.k, basis.digest) != (cfg.eigen_k, cfg.basis_digest)):
        raise UsageError(f"mode {cfg.mode} needs the class eigenbasis its settings name (training.with_basis)")
    if cfg.kind.generator and compile:
        raise UsageError(f"--compile applies to classifiers; mode {cfg.mode} trains the CVAE eagerly")
    if world > 1 and compile:
        raise UsageError("--compile is not supported with several processes (torchrun) yet")
    if cfg.batch_size < world:
        raise UsageError(f"--batch-size {cfg.batch_size} is smaller than the {world} processes it is split over")
    compiled = objective.kind == "classifier" and world == 1 and accel.resolve_compile(compile, device, "train")
    torch.manual_seed(cfg.seed)
    model = models.create(cfg.model, in_shape=dataset.shape, num_classes=dataset.num_classes,
                          mean=dataset.mean, std=dataset.std, **cfg.model_kwargs).to(device)
    closed_form = getattr(model, "closed_form", False)  # fitted in one pass (ppca): no optimizer, no steps
    opt = None if closed_form else torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
            if opt_state is not None and opt is not None:
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
    outer = _outer(model, objective, device, sync_bn) if world > 1 and not closed_form else None
    train_split, test_split = loader.place(dataset.train, device), loader.place(dataset.test, device)
    meta = None
    with console.progress() as bar:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            adversarial = cfg.kind.adversarial and epoch >= cfg.adv_start
            tag = "adv" if adversarial else (cfg.mode if cfg.kind.generator else "clean")
            task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs} [{tag}]", total=len(train_split), status="")
            kept = (f"epoch {epoch} is saved in {out}; rerun with --resume to continue from it" if epoch else
                    f"nothing of {out} is saved yet")
            with console.doing(f"in epoch {epoch + 1}/{cfg.epochs} of training {out}", kept):
                if closed_form:  # every process fits the same model to the same (whole) split
                    train_loss, train_accuracy = model.fit(train_split, device), None
                else:
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
