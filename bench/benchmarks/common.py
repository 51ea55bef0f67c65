"""Timing, commands and formatting shared by the benchmark modules and both drivers."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

# torch loads inside the functions that use it: gpu_check.py imports this module before torch

ROOT = Path(__file__).resolve().parents[2]

OLD_LOOP_BATCHES = 40  # gpu-check times the old training loop over this many batches (its speed is steady)

# wall clock by default; set_clock("cpu") uses this process's CPU time (single-threaded runs on a
# shared machine: it leaves out the time other processes hold the core)
CLOCK = time.perf_counter


def set_clock(kind: str) -> None:
    global CLOCK
    CLOCK = time.process_time if kind == "cpu" else time.perf_counter


def timed_round_robin(variants, *, budget_s, min_reps, max_reps, warmup=2, settle_s=0.0):
    """Seconds of each timed call, in order, for each variant; variants are callables taking a
    rotation index.

    settle_s: an untimed pause before each timed call. The covariance variants come from two
    thread runtimes (torch's OpenMP, numpy's OpenBLAS pthreads) whose idle threads keep spinning
    for a while after a call; back to back, each variant shares the cores with the previous
    library's spinning threads (the fused op measured up to 1.4x slower right after numpy). The
    pause lets them go to sleep, so each variant is timed on its own.
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


def event_time(fn, *, reps, warmup=3):
    """Median seconds of fn(i) over reps calls, each timed with CUDA events (CPU: perf_counter)."""
    import torch

    cuda = torch.cuda.is_available()
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(i)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sh(cmd, *, timeout, env=None, log=None) -> dict:
    """Run cmd in the repository; its exit code, seconds, last 15 lines and the failures it names."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = 124, ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
    if log is not None:
        Path(log).write_text(text)
    tail = "\n".join(text.strip().splitlines()[-15:])
    failed = sorted({ln.split("FAILED", 1)[1].split()[0] if "FAILED " in ln else ln.strip()
                     for ln in text.splitlines() if "FAILED" in ln or "crashed while running" in ln})
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - t0, 1), "tail": tail,
            "failed": failed}


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


def fmt_shape(shape) -> str:
    return "x".join(map(str, shape))
