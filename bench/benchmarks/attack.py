"""Attack timings on the CPU: a whole PGD-40 attack on LeNet5 (MNIST shape) through
`attacks.perturb` on the fused engine, on today's eager path (MANIFOLDADV_FUSED_ATTACK=0) and by
torchattacks' PGD at equal strength (same eps, step, 40 steps, random start); and adversarial
training epochs (PGD-40, PGD-5) through `training.train_epoch` with the engine on and off.

torchattacks is not a dependency: `make bench` installs it into .venv/bench-deps (no dependencies
of its own; it imports without torchvision), and the row is skipped without it.

FLOP count: per image and step, the forward's multiply-adds plus as many again for the input
gradient (each convolution's and linear layer's data gradient costs what its forward costs;
no weight gradients), at 2 FLOP each; pooling, ReLU, the loss and the step are not counted.
Peak: logical CPUs x the clock /proc/cpuinfo reports x 32 FLOP per cycle (two 8-lane fp32 FMA
pipes per core, AVX2), the engine's own instruction set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from manifoldadv import models, training
from manifoldadv.attacks import fused, make_spec, perturb
from manifoldadv.data import MNIST_MEAN, MNIST_STD, loader

from .common import medians, timed_round_robin
from .train import synthetic_dataset, train_config, trainee

DEPS = Path(__file__).resolve().parents[2] / ".venv" / "bench-deps"
BATCHES = (128, 500)


def torchattacks_pgd():
    """torchattacks.PGD, or None when it is not installed in .venv/bench-deps."""
    if DEPS.is_dir() and str(DEPS) not in sys.path:
        sys.path.insert(0, str(DEPS))
    try:
        import torchattacks
    except ImportError:
        return None, None
    return torchattacks.PGD, torchattacks.__version__


def flops_per_image_step(model, shape) -> float:
    """2 x (forward multiply-adds + input-gradient multiply-adds) of the engine's network."""
    macs = 0
    x = torch.zeros(1, *shape)
    for m in model.net:
        y = m(x)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            per_out = m.weight[0].numel()
            macs += y.numel() * per_out
        x = y
    return 2.0 * 2 * macs


def peak_gflops() -> tuple[float, float]:
    """(peak GFLOP/s, clock GHz): logical CPUs x clock x 32 FLOP/cycle (2 AVX2 FMA pipes)."""
    ghz = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                ghz = float(line.split(":")[1]) / 1000
                break
    except OSError:
        pass
    ghz = ghz or 2.45
    return torch.get_num_threads() * ghz * 32, ghz


def _with_engine(on: bool):
    if on:
        os.environ.pop(fused.ENV, None)
    else:
        os.environ[fused.ENV] = "0"


def bench_attack_cpu(*, quick, log):
    rows = []
    shape = (1, 28, 28)
    torch.manual_seed(0)
    model = models.create("lenet5", in_shape=shape, num_classes=10, mean=MNIST_MEAN, std=MNIST_STD).eval()
    steps = 4 if quick else 40
    spec = make_spec("pgd", "mnist", steps=steps)
    PGD, ta_version = torchattacks_pgd()
    flops = flops_per_image_step(model, shape)
    peak, ghz = peak_gflops()
    assert fused.why_not(model, torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long), spec) is None
    for b in BATCHES:
        g = torch.Generator().manual_seed(b)
        sets = [(torch.rand(b, *shape, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(4)]
        gen = torch.Generator().manual_seed(0)

        def ours(on):
            def call(i):
                _with_engine(on)
                x, y = sets[i % len(sets)]
                perturb(model, x, y, spec, generator=gen)
                _with_engine(True)
            return call

        variants = {"fused": ours(True), "eager": ours(False)}
        if PGD is not None:
            atk = PGD(model, eps=spec.eps, alpha=spec.step_size, steps=spec.steps, random_start=True)

            def ta(i):
                x, y = sets[i % len(sets)]
                atk(x, y)

            variants["torchattacks"] = ta
        times = timed_round_robin(variants, budget_s=0.0, min_reps=2 if quick else 5, max_reps=5, warmup=1)
        med = medians(times)
        gflops = flops * b * steps / med["fused"] / 1e9
        row = {"model": "lenet5", "data_shape": list(shape), "batch": b, "attack": spec.name, "steps": steps,
               "eps": spec.eps, "step_size": spec.step_size, "s": med, "reps": {k: len(v) for k, v in times.items()},
               "images_per_s": {k: b / v for k, v in med.items()},
               "fused_over_eager": med["eager"] / med["fused"],
               "fused_over_torchattacks": med["torchattacks"] / med["fused"] if "torchattacks" in med else None,
               "torchattacks": ta_version, "mflop_per_image_step": flops / 1e6, "fused_gflops": gflops,
               "peak_gflops": peak, "clock_ghz": ghz, "fraction_of_peak": gflops / peak}
        rows.append(row)
        ta_txt = (f", torchattacks {b / med['torchattacks']:.0f} images/s (fused x{row['fused_over_torchattacks']:.2f})"
                  if "torchattacks" in med else ", torchattacks not installed")
        log(f"PGD-{steps} LeNet5 batch {b}: fused {b / med['fused']:.0f} images/s, eager {b / med['eager']:.0f} "
            f"(fused x{row['fused_over_eager']:.2f}){ta_txt}; fused {gflops:.1f} GFLOP/s = "
            f"{100 * gflops / peak:.0f}% of {peak:.0f}")
    return rows


def bench_train_engine_cpu(*, quick, log):
    """images/s of MNIST PGD-adv training (LeNet5, batch 128) with the engine off and on, over
    the same batches from the same seed, round-robin; s/epoch = 60000 / images/s."""
    rows = []
    cpu = torch.device("cpu")
    for steps in ((2,) if quick else (40, 5)):
        cfg = train_config("mnist", "lenet5", steps)
        batches = 1 if quick else (4 if steps == 40 else 12)
        n = batches * cfg.batch_size
        ds = synthetic_dataset("mnist", n, 0)
        placed = loader.place(ds.train, cpu)

        def run(on):
            def call(i):
                _with_engine(on)
                model, opt, objective = trainee(ds, "lenet5", cfg, cpu)
                training.train_epoch(model, opt, objective, placed, cfg, 0, cpu)
                _with_engine(True)
            return call

        times = timed_round_robin({"eager": run(False), "fused": run(True)}, budget_s=0.0,
                                  min_reps=1 if quick else 3, max_reps=3, warmup=1)
        med = medians(times)
        ips = {k: n / v for k, v in med.items()}
        row = {"model": "lenet5", "data": "mnist", "attack_steps": steps, "batch_size": cfg.batch_size, "images": n,
               "s": med, "images_per_s": ips, "epoch_s": {k: 60000 / v for k, v in ips.items()},
               "fused_over_eager": med["eager"] / med["fused"]}
        rows.append(row)
        log(f"training LeNet5 PGD-{steps}: eager {ips['eager']:.0f} images/s ({60000 / ips['eager']:.0f} s/epoch), "
            f"fused {ips['fused']:.0f} images/s ({60000 / ips['fused']:.0f} s/epoch), x{row['fused_over_eager']:.2f}")
    return rows
