"""Training timings: adversarial-training epochs through the new loop
(manifoldadv.training.train_epoch) against the loop it replaced (bench/legacy_loop.py), and
epochs under torchrun.

Every row trains from the same seed on generated data of the real data sets' shapes, so the two
loops start from the same weights and see the same images.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from legacy_loop import legacy_epoch  # bench/, beside this package

from manifoldadv import checkpoint, models, training
from manifoldadv.attacks import graphed
from manifoldadv.data import CIFAR_MEAN, CIFAR_STD, MNIST_MEAN, MNIST_STD, Dataset, Split, loader
from manifoldadv.runtime import accel

from .common import OLD_LOOP_BATCHES, ROOT, last_line, medians, sh, sync, timed_round_robin


def synthetic_dataset(name, n_train, n_test, seed=0):
    """Random uint8 images of `name`'s shape and statistics, with random labels."""
    shape, mean, std = ((3, 32, 32), CIFAR_MEAN, CIFAR_STD) if name == "cifar10" else ((1, 28, 28), MNIST_MEAN, MNIST_STD)
    g = torch.Generator().manual_seed(seed)

    def split(n):
        return Split(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
                     torch.randint(0, 10, (n,), generator=g))

    return Dataset(name, split(n_train), split(n_test), 10, shape, mean, std)


def train_config(data, model_name, steps, precision="fp32", batch_size=None):
    """One epoch of PGD-`steps` training, adversarial from its first batch at full eps."""
    return training.resolve_config(data, "pgd", model=model_name, epochs=1, adv_start=0, steps=steps,
                                   eps_warmup=0, precision=precision, batch_size=batch_size)


def trainee(ds, model_name, cfg, dev, *, graphs=False):
    """(model, optimizer, objective), the model initialised from seed 0."""
    torch.manual_seed(0)
    model = models.create(model_name, in_shape=ds.shape, num_classes=10, mean=ds.mean, std=ds.std).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # attack graphs need CUDA; elsewhere (the dry run) their capture is emulated eagerly
    capture = graphed.cuda_capture if dev.type == "cuda" else graphed.eager_capture
    objective = training.ClassifierObjective(cfg, graphs=graphed.AttackGraphs(model, capture=capture) if graphs else None)
    return model, opt, objective


# ------------------------------------------------------------------------------ make bench

TRAIN_CASES = [  # (data, model, PGD steps, batches timed per call)
    ("mnist", "lenet5", 40, 4),
    ("cifar10", "resnet32", 10, 2),
]


def bench_train_cpu(*, quick, log):
    """images/s of the new training loop and of the old one, round-robin, same data and seeds."""
    rows = []
    cpu = torch.device("cpu")
    for data, model_name, steps, batches in TRAIN_CASES:
        if quick:
            steps, batches = max(2, steps // 10), 1
        cfg = train_config(data, model_name, steps)
        n = batches * cfg.batch_size
        ds = synthetic_dataset(data, n, 0)
        finals = {}

        def run(kind):
            def call(i):
                model, opt, objective = trainee(ds, model_name, cfg, cpu)
                if kind == "old":
                    legacy_epoch(model, opt, objective, ds.train, cfg, 0, cpu)
                else:
                    training.train_epoch(model, opt, objective, loader.place(ds.train, cpu), cfg, 0, cpu)
                finals[kind] = [p.detach() for p in model.parameters()]
            return call

        times = timed_round_robin({"old": run("old"), "new": run("new")}, budget_s=0.0,
                                  min_reps=1 if quick else 3, max_reps=3, warmup=1)
        med = medians(times)
        same = all(torch.equal(a, b) for a, b in zip(finals["old"], finals["new"]))
        row = {"model": model_name, "data": data, "attack_steps": steps, "batch_size": cfg.batch_size,
               "images": n, "augment": cfg.augment, "s": med, "reps": {k: len(v) for k, v in times.items()},
               "images_per_s": {k: n / v for k, v in med.items()}, "new_over_old": med["old"] / med["new"],
               "identical_weights": same}
        rows.append(row)
        log(f"training {model_name} PGD-{steps}: old {n / med['old']:.1f} images/s, new {n / med['new']:.1f} "
            f"images/s (x{row['new_over_old']:.3f}), identical weights: {same}")
    return rows


# ------------------------------------------------------------------------------ gpu-check

# The rows in the order the open targets need them; a row is skipped when the budget left is
# below 1.2x its estimate (s).
TRAIN_ROWS = [  # (data, model, PGD steps, images, loop, precision, compile, attack graphs, estimate_s)
    ("cifar10", "resnet32", 10, 50_000, "old", "fp32", False, False, 15),
    ("cifar10", "resnet32", 10, 50_000, "new", "bf16", True, False, 100),
    ("cifar10", "resnet32", 10, 50_000, "new", "bf16", False, True, 40),
    ("cifar10", "resnet32", 10, 50_000, "new", "bf16", True, True, 80),
    ("cifar10", "resnet32", 10, 50_000, "new", "fp32", False, False, 60),
    ("mnist", "lenet5", 40, 60_000, "old", "fp32", False, False, 15),
    ("mnist", "lenet5", 40, 60_000, "new", "bf16", False, True, 40),
    ("mnist", "lenet5", 40, 60_000, "new", "fp32", False, False, 60),
    ("mnist", "lenet5", 40, 60_000, "new", "bf16", True, False, 60),
    ("cifar10", "resnet32", 10, 50_000, "new", "fp32", True, False, 90),
    ("cifar10", "resnet32", 10, 50_000, "new", "bf16", False, False, 60),
]


def bench_train_device(dev, budget, *, dry_run, save, log, reserve=0) -> list:
    """One adversarial-training epoch per row through manifoldadv.training.train_epoch (the
    old loop, bench/legacy_loop.py, over OLD_LOOP_BATCHES batches). Compiled rows first run a
    warm-up epoch over 2.6 batches (compiling for the full and the last batch size; attack graphs
    capture the full batch's attack on its second batch), timed apart."""
    rows, data_cache = [], {}
    for data, model_name, steps, n, loop, precision, compile, graphs, estimate in TRAIN_ROWS:
        if dry_run:  # a full batch and a partial one (both loops warm up on the whole split)
            if compile:
                continue
            steps, n = 1, 24
        row = {"model": model_name, "data": data, "attack_steps": steps, "images": n, "loop": loop,
               "precision": precision, "compile": compile, "attack_graphs": graphs}
        if budget.left() - reserve < estimate * (1.2 if not dry_run else 0.0):
            rows.append({**row, "skipped": f"budget ({budget.left():.0f} s left, estimate {estimate} s)"})
            continue
        if (data, n) not in data_cache:
            data_cache.clear()
            ds = synthetic_dataset(data, n, 10)
            data_cache[(data, n)] = (ds, loader.place(ds.train, dev))
        ds, placed = data_cache[(data, n)]
        cfg = train_config(data, model_name, steps, precision, batch_size=16 if dry_run else None)
        model, opt, objective = trainee(ds, model_name, cfg, dev, graphs=graphs)
        # the old loop's window; the new loop is timed over it too (same batches: a like-for-like ratio)
        window = min(OLD_LOOP_BATCHES, -(-n // cfg.batch_size))
        try:
            if loop == "old":
                legacy_epoch(model, opt, objective, ds.train, cfg, 0, dev, max_batches=2)  # warm-up
                sync()
                t0 = time.perf_counter()
                loss, _ = legacy_epoch(model, opt, objective, ds.train, cfg, 1, dev, max_batches=window)
                sync()
                secs = time.perf_counter() - t0
                imgs = min(n, window * cfg.batch_size)
                row.update(timed_images=imgs, images_per_s=imgs / secs, epoch_s=n * secs / imgs, loss=loss)
            else:
                net = accel.prepare(model, precision=precision, compile=compile, device=dev)
                # 2.6 batches: compiles for both batch sizes; graphs capture the full batch's attack
                warm = loader.place(ds.train.head(2 * cfg.batch_size + (n % cfg.batch_size or cfg.batch_size // 2)), dev)
                t0 = time.perf_counter()
                training.train_epoch(net, opt, objective, warm, cfg, 0, dev)
                sync()
                row["warmup_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                row["window_loss"], _ = training.train_epoch(net, opt, objective, placed, cfg, 1, dev,
                                                             max_batches=window)
                sync()
                row["window_images_per_s"] = min(n, window * cfg.batch_size) / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                loss, acc = training.train_epoch(net, opt, objective, placed, cfg, 1, dev)
                sync()
                secs = time.perf_counter() - t0
                row.update(timed_images=n, images_per_s=n / secs, epoch_s=secs, loss=loss, train_accuracy=acc)
            log(f"train {model_name} PGD-{steps} {loop} {precision} compile={compile} graphs={graphs}: {row['epoch_s']:.1f} s/epoch "
                f"({row['images_per_s']:.0f} images/s), loss {row['loss']:.4f}"
                + (f", warm-up {row['warmup_s']:.1f} s" if "warmup_s" in row else ""))
        except Exception as exc:  # report and go on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log(f"train {model_name} {loop} {precision} compile={compile} graphs={graphs}: {row['error']}")
        rows.append(row)
        save(rows)
        del model, opt
    return rows


def bench_dist(dev, budget, outdir, *, dry_run, log) -> list:
    """`manifoldadv train` (synthetic MNIST-shaped data, LeNet5, PGD-10, one epoch) under torchrun
    with 1 and 2 processes; the same global batch, so the two models should end close."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    backend = "nccl" if dev.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"
    env["MANIFOLDADV_DIST_BACKEND"] = backend
    limit = "600" if dry_run else "20000"
    rows, weights = [], {}
    for n in (1, 2):
        if budget.left() < 40:
            rows.append({"processes": n, "skipped": f"budget ({budget.left():.0f} s left)"})
            continue
        out = outdir / f"dist-{n}.safetensors"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m",
               "manifoldadv", "train", "--data", "synthetic", "--mode", "pgd", "--steps", "10", "--epochs", "1",
               "--adv-start", "0", "--limit", limit, "--device", dev.type, "--no-compile", "--json", "--out", str(out)]
        r = sh(cmd, timeout=min(budget.left() - 20, 180), env=env, log=outdir / f"dist-{n}.log")
        row = {"processes": n, "backend": backend if n > 1 else None, "rc": r["rc"], "wall_s": r["seconds"]}
        if r["rc"] == 0 and out.exists():
            meta = checkpoint.load(out).meta
            row.update(epoch_s=meta["history"][0]["seconds"], world_size=meta.get("world_size"),
                       clean_accuracy=meta.get("clean_accuracy"))
            weights[n] = checkpoint.load(out).state_dict()
        else:
            row["error"] = last_line(r["tail"])
        rows.append(row)
        log(f"dist {n} process(es): rc {r['rc']}, {row.get('epoch_s', '-')} s/epoch, {r['seconds']} s wall")
    # a sanity figure, not a pass mark: PGD's sign steps amplify rounding (one process with 1 vs 2
    # threads ends this epoch 2.5e-2 apart on the CPU; CUDA adds nondeterministic sums)
    if len(weights) == 2:
        a, b = weights[1], weights[2]
        rows[-1]["max_rel_weight_diff"] = max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-30)) for k in a)
    return rows
