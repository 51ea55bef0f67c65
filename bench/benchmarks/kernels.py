"""Kernel timings: pgd_step and per-class covariance, each in two protocols.

make bench (`*_cpu`): every variant of a row timed round-robin on the host (so load changes hit
them alike), after warm-up, median of the repeats, inputs rotating over enough distinct sets that
no variant reads them from cache; pgd_step against the eager reference, torch.compile of it and
a byte limit (addcmul of the same size), covariance against numpy.

gpu-check (`*_device`): CUDA-event medians on the device (perf_counter on a CPU dry run);
pgd_step against a device-to-device copy moving the same bytes, covariance against torch
float64 X.T @ X per class. And one attack step of a model, eager, bf16 and compiled.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from manifoldadv import models, ops
from manifoldadv.attacks import frozen

from .common import event_time, fmt_shape, medians, timed_round_robin

NORMS = {
    "linf": dict(step=2 / 255, eps=8 / 255),
    "l2": dict(step=0.1, eps=0.5),
    "l1": dict(step=1.0, eps=10.0),
}


def max_abs_err(a, b) -> float:
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------ make bench

ROTATE_BYTES = 96 << 20
SETTLE_S = 0.5  # see timed_round_robin


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


def rotating(sets, fn):
    """A round-robin variant: fn(x, x0, g, out, x_inplace) on set i of the rotation."""
    return lambda i: fn(*sets[i % len(sets)])


def bench_pgd_cpu(sizes, norms, *, quick, use_compile, log):
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
            max_err = max_abs_err(ref_out, ops.pgd_step(*sets[0][:3], norm=norm, **cfg))
            variants = {
                "fused": rotating(sets, lambda x, x0, g, o, xi: ops.pgd_step(x, x0, g, norm=norm, **cfg)),
                "inplace": rotating(sets, lambda x, x0, g, o, xi: ops.pgd_step_(xi, x0, g, norm=norm, **cfg)),
                "eager": rotating(sets, lambda x, x0, g, o, xi: ops.pgd_step_reference(x, x0, g, norm=norm, **cfg)),
                "limit": rotating(sets, lambda x, x0, g, o, xi: torch.addcmul(x, x0, g, out=o)),
            }
            compile_s = None
            row_note = compile_note
            if compiled is not None:
                comp = rotating(sets, lambda x, x0, g, o, xi: compiled(x, x0, g, norm=norm, **cfg))
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
            log(f"pgd_step {norm:4s} {fmt_shape(shape):>12s}: fused {row['ms']['fused']:.3f} ms, "
                f"eager x{row['speedup_eager']:.1f}, limit x{row['fused_over_limit']:.2f}")
    return rows


def thread_cpu_seconds():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[tid] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return out


def bench_threads_cpu(norms, shape, *, quick, log):
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


def bench_cov_cpu(dims, n_rows, *, quick, log):
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


# ------------------------------------------------------------------------------ gpu-check

# l2 twice: the two-pass kernel and the register-resident one (MANIFOLDADV_CUDA_L2, pgd_step.cu)
PGD_VARIANTS = [("linf", None), ("l2", "block"), ("l2", "registers"), ("l1", None)]


def bench_pgd_device(dev, shapes, reps, *, log) -> list:
    chosen = os.environ.get("MANIFOLDADV_CUDA_L2")  # each l2 row sets its kernel; the caller's comes back
    try:
        return _bench_pgd_device(dev, shapes, reps, log)
    finally:
        if chosen is None:
            os.environ.pop("MANIFOLDADV_CUDA_L2", None)
        else:
            os.environ["MANIFOLDADV_CUDA_L2"] = chosen


def _bench_pgd_device(dev, shapes, reps, log) -> list:
    rows = []
    g = torch.Generator(device=dev).manual_seed(0)
    for shape in shapes:
        numel = math.prod(shape)
        sets = []
        for _ in range(2):  # two sets, each past the L2 cache, used in turn
            x0 = torch.rand(shape, generator=g, device=dev)
            x = (x0 + 0.02 * torch.randn(shape, generator=g, device=dev)).clamp(0, 1)
            sets.append((x, x0, torch.randn(shape, generator=g, device=dev)))
        src = torch.rand(2 * numel, generator=g, device=dev)  # a copy of 2 tensors' bytes reads and
        dst = torch.empty_like(src)                            # writes what one step does (3 + 1)
        t_copy = event_time(lambda i: dst.copy_(src), reps=reps)
        moved = 4 * numel * 4
        for norm, variant in PGD_VARIANTS:
            cfg = NORMS[norm]
            os.environ["MANIFOLDADV_CUDA_L2"] = variant or "block"
            x, x0, gr = sets[0]
            ref = ops.pgd_step_reference(x, x0, gr, norm=norm, **cfg)
            err = max_abs_err(ops.pgd_step(x, x0, gr, norm=norm, **cfg), ref)
            t = event_time(lambda i: ops.pgd_step(*sets[i % 2], norm=norm, **cfg), reps=reps)
            xs = [s[0].clone() for s in sets]
            t_in = event_time(lambda i: ops.pgd_step_(xs[i % 2], *sets[i % 2][1:], norm=norm, **cfg), reps=reps)
            rows.append({"norm": norm, "variant": variant, "shape": list(shape), "mb_per_tensor": numel * 4 / 1e6,
                         "ms": t * 1e3, "inplace_ms": t_in * 1e3, "copy_ms": t_copy * 1e3,
                         "gbps": moved / t / 1e9, "copy_gbps": moved / t_copy / 1e9,
                         "of_copy": t_copy / t, "inplace_of_copy": t_copy / t_in, "max_abs_err": err})
            log(f"pgd_step {norm} {variant or ''} {fmt_shape(shape)}: {t * 1e3:.3f} ms ({moved / t / 1e9:.0f} GB/s), "
                f"copy {t_copy * 1e3:.3f} ms: {t_copy / t:.2f} of copy; err {err:.1e}")
        del sets, src, dst
    return rows


def bench_cov_device(dev, dims, n_rows, reps, *, log) -> list:
    rows = []
    C = 10
    for d in dims:
        g = torch.Generator(device=dev).manual_seed(d)
        y = torch.randint(0, C, (n_rows,), generator=g, device=dev)
        centers = torch.randn(C, d, generator=g, device=dev)
        X = centers[y] + torch.randn(n_rows, d, generator=g, device=dev)
        X64 = X.double()
        per_class = [X64[y == c] for c in range(C)]

        def fused(i):
            return ops.ClassCovariance(C, d, device=dev).update(X, y).finalize()

        def xtx(i):
            return [xc.T @ xc for xc in per_class]

        t_f = event_time(fused, reps=reps, warmup=1)
        t_x = event_time(xtx, reps=reps, warmup=1)
        _, _, cov = fused(0)
        err = max(float((cov[c] - torch.cov(per_class[c].T)).abs().max() / torch.cov(per_class[c].T).abs().max())
                  for c in range(C))
        rows.append({"d": d, "rows": n_rows, "fused_s": t_f, "xtx_s": t_x, "fused_over_xtx": t_f / t_x,
                     "max_rel_err": err})
        log(f"class_cov d={d}: fused {t_f * 1e3:.1f} ms, float64 X.T@X per class {t_x * 1e3:.1f} ms "
            f"({t_f / t_x:.2f}x), rel err {err:.1e}")
        del X, X64, per_class
    return rows


def bench_steps_device(dev, budget, reserve, *, log) -> list:
    """One attack step at batch 128: eager fp32, bf16 autocast, and compiled variants."""
    import torch.nn.functional as F

    rows = []
    for name, shape in (("lenet5", (1, 28, 28)), ("resnet32", (3, 32, 32))):
        torch.manual_seed(0)
        base = models.create(name, in_shape=shape, num_classes=10, mean=(0.5,) * shape[0], std=(0.25,) * shape[0]).to(dev)
        x0 = torch.rand(128, *shape, device=dev)
        y = torch.randint(0, 10, (128,), device=dev)
        variants = [("fp32", None), ("bf16", None)]
        if dev.type == "cuda":
            variants += [("fp32", "default"), ("bf16", "default"), ("bf16", "reduce-overhead")]
        for precision, mode in variants:
            if budget.left() < reserve:
                rows.append({"model": name, "precision": precision, "compile": mode, "skipped": "budget"})
                continue
            model = base if mode is None else torch.compile(base, mode=mode)
            dtype = torch.bfloat16 if precision == "bf16" else None

            def step(i, model=model, dtype=dtype):
                x = x0.clone().requires_grad_(True)
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, reduction="none")
                (grad,) = torch.autograd.grad(loss.sum(), x)
                return ops.pgd_step_(x.detach(), x0, grad, step=2 / 255, eps=8 / 255, norm="linf"), grad

            with frozen(base):
                t0 = time.perf_counter()
                try:
                    _, grad = step(0)
                    first = time.perf_counter() - t0
                    zero = float((grad == 0).float().mean())
                    t = event_time(step, reps=30, warmup=3)
                except Exception as exc:  # report and go on
                    rows.append({"model": name, "precision": precision, "compile": mode,
                                 "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
                    log(f"step {name} {precision} {mode}: {rows[-1]['error']}")
                    continue
            rows.append({"model": name, "precision": precision, "compile": mode, "ms": t * 1e3,
                         "first_call_s": first, "zero_grad_fraction": zero})
            log(f"step {name} {precision} compile={mode}: {t * 1e3:.3f} ms (first call {first:.1f} s, "
                f"zero grads {zero:.4f})")
    return rows
