"""Benchmarks of the compiled manifoldadv kernels (CPU): `make bench`, or

    python bench/run.py [--json] [--out results.json] [--quick] [--no-compile]

pgd_step, per norm and size: the fused kernel (new tensor, and in place) against the eager
PyTorch reference (manifoldadv.ops.pgd_step_reference), torch.compile of that reference, and
the byte limit: a preallocated 3-read-1-write torch.addcmul(x, x0, g, out=o) of the same size.
Per-class covariance (10 classes, 60k rows, d = 784 and 3072): the fused op (update + finalize)
against a float64 per-class numpy np.cov loop and numpy's float64 X.T @ X over the same rows.

End to end (`--only train`): adversarial-training throughput (images/s through PGD-K, batch
128) of LeNet5 on MNIST-shaped and ResNet32 on CIFAR-shaped (augmented) data, the training loop
(`manifoldadv.training.train_epoch`) against the loop it replaced (bench/legacy_loop.py).

Every number is a ratio taken within one run: the variants of one row are timed round-robin
(so load changes hit them alike), after warm-up, median of the repeats, and the inputs rotate
over enough distinct sets (>= 96 MiB together) that no variant reads them from cache. The
covariance half runs first (see main).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

def _early_threads(argv):
    # BLAS thread pools read their environment when numpy / torch load: set it before.
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
        else:
            continue
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = n


_early_threads(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from manifoldadv import ops  # noqa: E402

SIZES = [(128, 1, 28, 28), (1024, 1, 28, 28), (256, 3, 32, 32), (1024, 3, 32, 32)]
NORMS = {
    "linf": dict(step=2 / 255, eps=8 / 255),
    "l2": dict(step=0.1, eps=0.5),
    "l1": dict(step=1.0, eps=10.0),
}
ROTATE_BYTES = 96 << 20

# The CPU kernels' speed targets.
TARGETS = {
    "linf/l2 >= 5x eager at 1024x3x32x32": ("speedup_eager", ("linf", "l2"), (1024, 3, 32, 32), ">=", 5.0),
    "linf/l2 >= 2x eager at 128x1x28x28": ("speedup_eager", ("linf", "l2"), (128, 1, 28, 28), ">=", 2.0),
    "linf/l2 within 1.5x of the byte limit (in place, every size)": ("inplace_over_limit", ("linf", "l2"), None, "<=", 1.5),
    "l1 >= 10x the batched torch reference (every size)": ("speedup_eager", ("l1",), None, ">=", 10.0),
}


# ------------------------------------------------------------------------------ timing

# wall clock by default; --clock cpu uses this process's CPU time (single-threaded runs on a
# shared machine: it leaves out the time other processes hold the core)
CLOCK = time.perf_counter


def timed_round_robin(variants, *, budget_s, min_reps, max_reps, warmup=2, settle_s=0.0):
    """Seconds of each timed call, in order, for each variant; variants are callables taking a
    rotation index.

    settle_s: an untimed pause before each timed call. The covariance variants come from two
    thread runtimes (torch's OpenMP, numpy's OpenBLAS pthreads) whose idle threads keep spinning
    for a while after a call; back to back, each variant then shares the two cores with the
    previous library's spinning threads (measured: the fused op 0.54 s alone, 0.61-0.74 s right
    after numpy). The pause lets them go to sleep, so each variant is timed on its own.
    """
    est = {}
    for name, fn in variants.items():
        t0 = CLOCK()
        for i in range(warmup):
            fn(i)
        est[name] = max((CLOCK() - t0) / warmup, 1e-7)
    reps = {k: int(min(max_reps, max(min_reps, budget_s / t))) for k, t in est.items()}
    times = {k: [] for k in variants}
    i = warmup
    while any(len(times[k]) < reps[k] for k in variants):
        for name, fn in variants.items():
            if len(times[name]) < reps[name]:
                if settle_s:
                    time.sleep(settle_s)
                t0 = CLOCK()
                fn(i)
                times[name].append(CLOCK() - t0)
        i += 1
    return times


def medians(times):
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------ pgd_step


def make_sets(shape, norm, n_sets, seed=0):
    """(x, x0, g, out, x_inplace) per set: x0 in [0,1], x a plausible iterate of that norm."""
    gen = torch.Generator().manual_seed(seed)
    cfg = NORMS[norm]
    sets = []
    for _ in range(n_sets):
        x0 = torch.rand(shape, generator=gen)
        if norm == "linf":
            x = (x0 + cfg["eps"] * (2 * torch.rand(shape, generator=gen) - 1)).clamp(0, 1)
        elif norm == "l2":
            d = torch.randn(shape, generator=gen)
            d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (len(shape) - 1)) * cfg["eps"] / 2
            x = (x0 + d).clamp(0, 1)
        else:  # 15 SLIDE steps of l1 length <= step = 1 from x0: the sparse iterate of an l1
            # attack in its steady state, on the eps = 10 sphere, where every step projects
            x = x0.clone()
            for _ in range(15):
                x = ops.pgd_step(x, x0, torch.randn(shape, generator=gen), norm="l1", **cfg)
        g = torch.randn(shape, generator=gen)
        sets.append((x, x0, g, torch.empty(shape), x.clone()))
    return sets


def compiled_reference():
    try:  # several (norm, shape) specialisations of one function
        torch._dynamo.config.cache_size_limit = 64
        if hasattr(torch._dynamo.config, "recompile_limit"):
            torch._dynamo.config.recompile_limit = 64
    except Exception:  # pragma: no cover
        pass
    return torch.compile(ops.pgd_step_reference, dynamic=False)


def bench_pgd(sizes, norms, *, quick, use_compile, log):
    rows = []
    compiled = compiled_reference() if use_compile else None
    compile_note = None if use_compile else "disabled (--no-compile)"
    for shape in sizes:
        set_bytes = 5 * math.prod(shape) * 4
        n_sets = int(min(64, max(2, math.ceil(ROTATE_BYTES / set_bytes))))
        for norm in norms:
            cfg = NORMS[norm]
            sets = make_sets(shape, norm, n_sets)
            ref_out = ops.pgd_step_reference(*sets[0][:3], norm=norm, **cfg)
            kern_out = ops.pgd_step(*sets[0][:3], norm=norm, **cfg)
            max_err = float((ref_out - kern_out).abs().max())

            def fused(i, s=sets):
                x, x0, g, _, _ = s[i % len(s)]
                return ops.pgd_step(x, x0, g, norm=norm, **cfg)

            def inplace(i, s=sets):
                _, x0, g, _, xi = s[i % len(s)]
                return ops.pgd_step_(xi, x0, g, norm=norm, **cfg)

            def eager(i, s=sets):
                x, x0, g, _, _ = s[i % len(s)]
                return ops.pgd_step_reference(x, x0, g, norm=norm, **cfg)

            def limit(i, s=sets):
                x, x0, g, o, _ = s[i % len(s)]
                return torch.addcmul(x, x0, g, out=o)

            variants = {"fused": fused, "inplace": inplace, "eager": eager, "limit": limit}
            compile_s = None
            row_note = compile_note
            if compiled is not None:
                def comp(i, s=sets):
                    x, x0, g, _, _ = s[i % len(s)]
                    return compiled(x, x0, g, norm=norm, **cfg)

                try:
                    t0 = time.perf_counter()
                    out = comp(0)
                    compile_s = time.perf_counter() - t0
                    if not torch.allclose(out, ref_out, atol=1e-5, equal_nan=True):
                        raise RuntimeError("compiled reference disagrees with eager")
                    variants["compiled"] = comp
                    if norm == "l1":
                        row_note = "graph break at the data-dependent early exit of the l1 projection"
                except Exception as exc:  # report the row as unavailable, with the reason
                    row_note = f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            budget = 0.3 if quick else 1.5
            times = timed_round_robin(variants, budget_s=budget, min_reps=3, max_reps=15 if quick else 40)
            med = medians(times)
            row = {
                "norm": norm,
                "shape": list(shape),
                "sets": n_sets,
                "ms": {k: v * 1e3 for k, v in med.items()},
                "reps": {k: len(v) for k, v in times.items()},
                "max_abs_err_vs_reference": max_err,
                "speedup_eager": med["eager"] / med["fused"],
                "speedup_compiled": (med["compiled"] / med["fused"]) if "compiled" in med else None,
                "fused_over_limit": med["fused"] / med["limit"],
                "inplace_over_limit": med["inplace"] / med["limit"],
                "compile_first_call_s": compile_s,
                "compiled_note": row_note,
            }
            rows.append(row)
            log(f"pgd_step {norm:4s} {'x'.join(map(str, shape)):>12s}: fused {row['ms']['fused']:.3f} ms, "
                f"eager x{row['speedup_eager']:.1f}, limit x{row['fused_over_limit']:.2f}")
    return rows


# ------------------------------------------------------------------------------ threads


def thread_cpu_seconds():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[tid] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


def bench_threads(norms, shape, *, quick, log):
    """Does the kernel use every thread? Per-thread CPU time during a burst of calls, and the
    1-thread / n-thread wall-time ratio (timed round-robin)."""
    rows = []
    nthreads = torch.get_num_threads()
    for norm in norms:
        cfg = NORMS[norm]
        sets = make_sets(shape, norm, 2)
        reps = 10 if quick else 40
        before = thread_cpu_seconds()
        t0 = time.perf_counter()
        for i in range(reps):
            x, x0, g, _, _ = sets[i % 2]
            ops.pgd_step(x, x0, g, norm=norm, **cfg)
        wall = time.perf_counter() - t0
        after = thread_cpu_seconds()
        busy = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)[:nthreads]

        def at(n):
            def f(i):
                torch.set_num_threads(n)
                try:
                    x, x0, g, _, _ = sets[i % 2]
                    ops.pgd_step(x, x0, g, norm=norm, **cfg)
                finally:
                    torch.set_num_threads(nthreads)
            return f

        med = medians(timed_round_robin({"1": at(1), str(nthreads): at(nthreads)}, budget_s=0.5 if quick else 2.0,
                                        min_reps=3, max_reps=40))
        row = {
            "norm": norm, "shape": list(shape), "threads": nthreads,
            "busiest_thread_cpu_s": busy, "wall_s": wall,
            "speedup_vs_1_thread": med["1"] / med[str(nthreads)],
        }
        rows.append(row)
        log(f"threads {norm}: per-thread CPU {[round(b, 3) for b in busy]} s over {wall:.3f} s wall, "
            f"x{row['speedup_vs_1_thread']:.2f} vs 1 thread")
    return rows


# ------------------------------------------------------------------------------ covariance


SETTLE_S = 0.5  # see timed_round_robin


def bench_cov(dims, n_rows, *, quick, log):
    rows = []
    C = 10
    for d in dims:
        rng = np.random.default_rng(d)
        centers = rng.normal(size=(C, d)).astype(np.float32)
        y = rng.integers(0, C, n_rows)
        X32 = (centers[y] + rng.normal(size=(n_rows, d)).astype(np.float32))
        X64 = X32.astype(np.float64)
        Xt, yt = torch.from_numpy(X32), torch.from_numpy(y)

        def fused(i):
            return ops.ClassCovariance(C, d).update(Xt, yt).finalize()

        def npcov(i):
            return [np.cov(X64[y == c], rowvar=False) for c in range(C)]

        def limit(i):
            return X64.T @ X64

        variants = {"fused": fused, "np_cov_loop": npcov, "XtX": limit}
        times = timed_round_robin(variants, budget_s=0.0, min_reps=2 if quick else 5, max_reps=5, warmup=1,
                                  settle_s=SETTLE_S)
        med = medians(times)
        _, _, cov = fused(0)
        ref = npcov(0)
        err = max(float(np.abs(cov[c].numpy() - ref[c]).max() / np.abs(ref[c]).max()) for c in range(C))
        row = {
            "d": d, "rows": n_rows, "classes": C, "s": med, "reps": {k: len(v) for k, v in times.items()},
            "samples_s": {k: [round(t, 4) for t in v] for k, v in times.items()},  # in timing order
            "np_cov_over_fused": med["np_cov_loop"] / med["fused"],
            "fused_over_limit": med["fused"] / med["XtX"],
            "max_rel_err_vs_np_cov": err,
        }
        rows.append(row)
        log(f"covariance d={d}: fused {med['fused']:.3f} s, np.cov loop x{row['np_cov_over_fused']:.2f}, "
            f"limit x{row['fused_over_limit']:.2f}, rel err {err:.1e}")
        del X32, X64, Xt
    return rows


# ------------------------------------------------------------------------------ training loop

TRAIN_CASES = [  # (data, model, PGD steps, batches timed per call)
    ("mnist", "lenet5", 40, 4),
    ("cifar10", "resnet32", 10, 2),
]


def bench_train(*, quick, log):
    """images/s of the new training loop and of the old one, round-robin, same data and seeds."""
    from legacy_loop import legacy_epoch
    from manifoldadv.data import loader
    from manifoldadv import models, training
    from manifoldadv.data import CIFAR_MEAN, CIFAR_STD, MNIST_MEAN, MNIST_STD, Split

    rows = []
    for data, model_name, steps, batches in TRAIN_CASES:
        if quick:
            steps, batches = max(2, steps // 10), 1
        shape, mean, std = ((3, 32, 32), CIFAR_MEAN, CIFAR_STD) if data == "cifar10" else ((1, 28, 28), MNIST_MEAN, MNIST_STD)
        cfg = training.resolve_config(data, "pgd", epochs=1, adv_start=0, steps=steps, eps_warmup=0)
        n = batches * cfg.batch_size
        gen = torch.Generator().manual_seed(0)
        split = Split(torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8),
                      torch.randint(0, 10, (n,), generator=gen))
        cpu = torch.device("cpu")
        finals = {}

        def run(kind):
            def call(i):
                torch.manual_seed(0)
                model = models.create(model_name, in_shape=shape, num_classes=10, mean=mean, std=std)
                opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
                objective = training.ClassifierObjective(cfg)
                if kind == "old":
                    legacy_epoch(model, opt, objective, split, cfg, 0, cpu)
                else:
                    training.train_epoch(model, opt, objective, loader.place(split, cpu), cfg, 0, cpu)
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


# ------------------------------------------------------------------------------ report


def machine():
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), None)
    except (OSError, subprocess.SubprocessError):
        model = None
    import scipy

    try:  # numpy's BLAS computes the X.T @ X limit
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        numpy_blas = f"{blas.get('name')} {blas.get('version')}"
    except (AttributeError, KeyError, TypeError):
        numpy_blas = None
    return {
        "cpu_model": model or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "kernel_isa": ops.cpu_kernel_isa(),
        "cpu_covariance_blas": ops.cpu_blas(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numpy_blas": numpy_blas,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "loadavg_start": os.getloadavg(),
    }


def evaluate_targets(res):
    out = []
    for name, (key, norms, shape, op, bound) in TARGETS.items():
        vals = [r[key] for r in res["pgd_step"] if r["norm"] in norms and (shape is None or tuple(r["shape"]) == shape)]
        if not vals:
            continue
        worst = min(vals) if op == ">=" else max(vals)
        met = worst >= bound if op == ">=" else worst <= bound
        out.append({"target": name, "worst": worst, "met": met})
    for r in res["covariance"]:
        out.append({"target": f"covariance d={r['d']}: >= 1.2x faster than the np.cov loop",
                    "worst": r["np_cov_over_fused"], "met": r["np_cov_over_fused"] >= 1.2})
        out.append({"target": f"covariance d={r['d']}: within 1.3x of numpy X.T@X",
                    "worst": r["fused_over_limit"], "met": r["fused_over_limit"] <= 1.3})
        out.append({"target": f"covariance d={r['d']}: float64-accurate (rel err <= 1e-10 vs np.cov)",
                    "worst": r["max_rel_err_vs_np_cov"], "met": r["max_rel_err_vs_np_cov"] <= 1e-10})
    for r in res.get("train", []):
        out.append({"target": f"training loop {r['model']} PGD-{r['attack_steps']}: new >= 0.95x old throughput",
                    "worst": r["new_over_old"], "met": r["new_over_old"] >= 0.95})
        out.append({"target": f"training loop {r['model']}: same weights as the old loop",
                    "worst": float(r["identical_weights"]), "met": r["identical_weights"]})
    for r in res["pgd_step"]:
        if r["norm"] == "l1":
            out.append({"target": f"l1 exact to 1e-6 at {'x'.join(map(str, r['shape']))}",
                        "worst": r["max_abs_err_vs_reference"], "met": r["max_abs_err_vs_reference"] <= 1e-6})
    return out


def print_tables(res):
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 150)
    m = res["machine"]
    con.print(f"[bold]manifoldadv kernels[/] on {m['cpu_model']} ({m['logical_cpus']} CPUs, "
              f"{m['torch_threads']} torch threads, kernels: {m['kernel_isa']}), torch {m['torch']}, "
              f"numpy {m['numpy']}; {res['clock']} clock; load average at start "
              f"{tuple(round(v, 2) for v in m['loadavg_start'])}")
    t = Table(title="pgd_step (ms per call, median; ratios within this run)") if res["pgd_step"] else None
    if t is not None:
        for col in ["norm", "shape", "fused", "in place", "eager", "compiled", "limit", "x eager",
                    "x compiled", "fused/limit", "in-place/limit"]:
            t.add_column(col, justify="right")
        for r in res["pgd_step"]:
            ms = r["ms"]
            t.add_row(r["norm"], "x".join(map(str, r["shape"])), f"{ms['fused']:.3f}", f"{ms['inplace']:.3f}",
                      f"{ms['eager']:.2f}", f"{ms['compiled']:.2f}" if "compiled" in ms else "n/a",
                      f"{ms['limit']:.3f}", f"{r['speedup_eager']:.1f}",
                      f"{r['speedup_compiled']:.1f}" if r["speedup_compiled"] else "n/a",
                      f"{r['fused_over_limit']:.2f}", f"{r['inplace_over_limit']:.2f}")
        con.print(t)
    notes = sorted({r["compiled_note"] for r in res["pgd_step"] if r["compiled_note"]})
    for n in notes:
        con.print(f"  compiled: {n}")
    if res["threads"]:
        t = Table(title="threading (largest size)")
        for col in ["norm", "threads", "CPU s of the busiest threads", "wall s", "x vs 1 thread"]:
            t.add_column(col, justify="right")
        for r in res["threads"]:
            t.add_row(r["norm"], str(r["threads"]), ", ".join(f"{b:.3f}" for b in r["busiest_thread_cpu_s"]),
                      f"{r['wall_s']:.3f}", f"{r['speedup_vs_1_thread']:.2f}")
        con.print(t)
    if res["covariance"]:
        t = Table(title="per-class covariance, 10 classes (s per call, median)")
        for col in ["d", "rows", "fused", "np.cov loop", "X.T@X", "np.cov/fused", "fused/limit", "rel err"]:
            t.add_column(col, justify="right")
        for r in res["covariance"]:
            s = r["s"]
            t.add_row(str(r["d"]), str(r["rows"]), f"{s['fused']:.3f}", f"{s['np_cov_loop']:.3f}", f"{s['XtX']:.3f}",
                      f"{r['np_cov_over_fused']:.2f}", f"{r['fused_over_limit']:.2f}",
                      f"{r['max_rel_err_vs_np_cov']:.1e}")
        con.print(t)
    if res.get("train"):
        t = Table(title="adversarial training loop, batch 128 (images/s, median; ratios within this run)")
        for col in ["model", "PGD steps", "images", "augment", "old loop", "new loop", "new/old", "same weights"]:
            t.add_column(col, justify="right")
        for r in res["train"]:
            ips = r["images_per_s"]
            t.add_row(r["model"], str(r["attack_steps"]), str(r["images"]), str(r["augment"]), f"{ips['old']:.1f}",
                      f"{ips['new']:.1f}", f"{r['new_over_old']:.3f}", str(r["identical_weights"]))
        con.print(t)
    t = Table(title="targets")
    t.add_column("target")
    t.add_column("worst", justify="right")
    t.add_column("met")
    for r in res["targets"]:
        t.add_row(r["target"], f"{r['worst']:.3g}", "[green]yes[/]" if r["met"] else "[red]NO[/]")
    con.print(t)
    con.print(f"load average at end {tuple(round(v, 2) for v in res['loadavg_end'])}; "
              f"total {res['seconds']:.0f} s")


def markdown(res):
    """The results as Markdown tables (for bench/RESULTS.md)."""
    m = res["machine"]
    out = [f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
           f"kernel table `{m['kernel_isa']}` (torch capability {m['torch_cpu_capability']}); torch {m['torch']}, "
           f"numpy {m['numpy']}, scipy {m['scipy']}, Python {m['python']}. Clock: {res['clock']}. "
           f"Load average {tuple(round(v, 2) for v in m['loadavg_start'])} at start, "
           f"{tuple(round(v, 2) for v in res['loadavg_end'])} at end. Command: `{res['command']}` ({res['date']}).", ""]
    if res["pgd_step"]:
        out += md_table(["norm", "shape", "fused ms", "in-place ms", "eager ms", "compiled ms", "limit ms", "x eager",
                         "x compiled", "fused/limit", "in-place/limit"],
                        [[r["norm"], "x".join(map(str, r["shape"])), f"{r['ms']['fused']:.3f}",
                          f"{r['ms']['inplace']:.3f}", f"{r['ms']['eager']:.3f}",
                          f"{r['ms']['compiled']:.3f}" if "compiled" in r["ms"] else "n/a", f"{r['ms']['limit']:.3f}",
                          f"{r['speedup_eager']:.1f}", f"{r['speedup_compiled']:.1f}" if r["speedup_compiled"] else "n/a",
                          f"{r['fused_over_limit']:.2f}", f"{r['inplace_over_limit']:.2f}"] for r in res["pgd_step"]])
    if res["threads"]:
        out += md_table(["norm", "threads", "CPU s of the busiest threads", "wall s", "x vs 1 thread"],
                        [[r["norm"], r["threads"], ", ".join(f"{b:.3f}" for b in r["busiest_thread_cpu_s"]),
                          f"{r['wall_s']:.3f}", f"{r['speedup_vs_1_thread']:.2f}"] for r in res["threads"]])
    if res["covariance"]:
        out += md_table(["d", "rows", "fused s", "np.cov loop s", "X.T@X s", "np.cov/fused", "fused/limit", "max rel err"],
                        [[r["d"], r["rows"], f"{r['s']['fused']:.3f}", f"{r['s']['np_cov_loop']:.3f}",
                          f"{r['s']['XtX']:.3f}", f"{r['np_cov_over_fused']:.2f}", f"{r['fused_over_limit']:.2f}",
                          f"{r['max_rel_err_vs_np_cov']:.1e}"] for r in res["covariance"]])
    if res.get("train"):
        out += md_table(["model", "PGD steps", "images", "augment", "old loop images/s", "new loop images/s", "new/old",
                         "same weights"],
                        [[r["model"], r["attack_steps"], r["images"], r["augment"], f"{r['images_per_s']['old']:.1f}",
                          f"{r['images_per_s']['new']:.1f}", f"{r['new_over_old']:.3f}", r["identical_weights"]]
                         for r in res["train"]])
    out += md_table(["target", "worst", "met"],
                    [[t["target"], f"{t['worst']:.3g}", "yes" if t["met"] else "**no**"] for t in res["targets"]])
    return "\n".join(out).rstrip("\n")


def md_table(header, rows) -> list[str]:
    """A Markdown table (and a blank line after it)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON (no table)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller covariance (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--only", choices=["pgd", "cov", "train"], help="run one part")
    p.add_argument("--threads", type=int, help="torch / BLAS threads (default: torch's default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time (default) or process CPU time (only meaningful with --threads 1)")
    p.add_argument("--load", help="render a saved JSON result instead of running")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    a = p.parse_args(argv)
    if a.load:
        res = json.loads(Path(a.load).read_text())
        print(markdown(res) if a.markdown else "", end="\n" if a.markdown else "")
        if not a.markdown:
            print_tables(res)
        return
    global CLOCK
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.clock == "cpu":
        if torch.get_num_threads() != 1:
            sys.exit("--clock cpu needs --threads 1")
        CLOCK = time.process_time
    if not ops.extension_loaded():
        sys.exit(f"manifoldadv._C is not built ({ops.EXTENSION_ERROR}); run `make setup`")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    t0 = time.time()
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "clock": a.clock,
           "command": " ".join([Path(sys.executable).name] + sys.argv), "pgd_step": [], "threads": [],
           "covariance": [], "train": []}
    sizes = SIZES[:1] + SIZES[-1:] if a.quick else SIZES
    # The covariance half first, while the process holds nothing but its imports. Its variants
    # allocate 1.5-2.2 GB of fresh memory per call, and what that costs on this VM depends on what
    # else holds memory: beside an idle process holding the pgd half's 1.3 GB the fused op took
    # 6.7-7.0 s and the np.cov loop 7.6-7.9 s at d = 3072, alone 6.0-6.1 s and 8.5-8.9 s.
    if a.only in (None, "cov"):
        res["covariance"] = bench_cov([784, 3072], 12_000 if a.quick else 60_000, quick=a.quick, log=log)
    if a.only in (None, "pgd"):
        res["pgd_step"] = bench_pgd(sizes, list(NORMS), quick=a.quick, use_compile=not a.no_compile, log=log)
        if torch.get_num_threads() > 1:
            res["threads"] = bench_threads(list(NORMS), SIZES[-1], quick=a.quick, log=log)
    if a.only in (None, "train"):
        res["train"] = bench_train(quick=a.quick, log=log)
    res["targets"] = evaluate_targets(res)
    res["loadavg_end"] = os.getloadavg()
    res["seconds"] = time.time() - t0
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.json:
        print(text)
    elif a.markdown:
        print(markdown(res))
    else:
        print_tables(res)


if __name__ == "__main__":
    main()
