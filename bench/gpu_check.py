"""The GPU check: one command for a lent CUDA machine (`make gpu-check`), or `--dry-run` on CPU.

    python3 bench/gpu_check.py [--dry-run] [--budget-s 420] [--only build,tests,kernels,train,dist,suite]

Sections, in order (the kernel and training numbers before the long suite), each skipped with a
note once the time budget is spent:
  build    the extension against this python's torch, for this GPU's architecture
  tests    the CUDA tests (pytest -m cuda)
  kernels  pgd_step (linf, l2, l1) against a device-to-device copy moving the same bytes
           (>= 100 MB per tensor); class_cov at d = 784 and 3072 (60k rows, 10 classes)
           against torch float64 X.T @ X per class
  train    one PGD-10 adversarial-training epoch of ResNet32 on 50k generated CIFAR-format
           images and one PGD-40 epoch of LeNet5 on 60k MNIST-shaped images: the training loop
           (bf16 + compile, bf16 + attack graphs, ...) and the loop it replaced
           (bench/legacy_loop.py); rows are skipped to leave 50 s for dist
  dist     torchrun: one PGD-10 training epoch with 1 and with 2 processes (NCCL with a GPU each;
           with one GPU, gloo and both on it: the CUDA path of distributed.py, not NCCL),
           wall times and how far apart the two models end
  suite    the rest of the test suite (its CLI tests run on the GPU: --device defaults to auto)
  steps    (only when asked) one attack step at batch 128, eager / bf16 / compiled
Prints one table last; writes gpu-check.json (and the logs) under $OUT when set, else --out,
after every section. --dry-run: tiny sizes, CPU, no build, tests or suite (CI runs it).
The benchmarks themselves are in bench/benchmarks/ (shared with bench/run.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.common import ROOT, last_line, sh

SECTIONS = ("build", "tests", "kernels", "train", "dist", "suite", "steps")
DEFAULT_SECTIONS = ("build", "tests", "kernels", "train", "dist", "suite")


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)


def say(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- environment


def environment(torch) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            env["driver"] = q.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    try:
        env["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True,
                                     timeout=20).stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        env["nvcc"] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def build(torch, budget, outdir) -> dict:
    env = dict(os.environ)
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    return sh([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], timeout=budget.left() - 5, env=env,
              log=outdir / "build.log")


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, no build (CI)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting sections after this many seconds")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but steps)")
    p.add_argument("--out", help="folder for gpu-check.json and logs (default: $OUT, else no files)")
    a = p.parse_args(argv)
    only = [s for s in a.only.split(",") if s]
    if a.dry_run:  # CI runs the dry run inside the suite: no build, no pytest inside pytest
        only = [s for s in only if s not in ("build", "tests", "suite")]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {', '.join(SECTIONS)}")
    outdir = Path(a.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-check-"))
    outdir.mkdir(parents=True, exist_ok=True)
    budget = Budget(a.budget_s)
    import torch

    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "dry_run": a.dry_run,
           "command": " ".join([Path(sys.executable).name] + sys.argv), "env": environment(torch), "skipped": []}
    say(json.dumps(res["env"]))
    if not a.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU visible (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    t_start = time.monotonic()

    def save(doc):  # after every section: a run cut short still leaves its numbers
        tmp = outdir / "gpu-check.json.tmp"
        tmp.write_text(json.dumps({**doc, "seconds": time.monotonic() - t_start}, indent=2) + "\n")
        tmp.replace(outdir / "gpu-check.json")

    def want(section, reserve):
        if section not in only:
            return False
        if budget.left() < reserve:
            res["skipped"].append(f"{section} (budget: {budget.left():.0f} s left)")
            return False
        return True

    if want("build", 60) and not a.dry_run:
        say("build")
        res["build"] = build(torch, budget, outdir)
        say(f"build rc {res['build']['rc']} in {res['build']['seconds']} s")
    sys.path.insert(0, str(ROOT))
    from manifoldadv import ops

    res["env"]["extension"] = "loaded" if ops.extension_loaded() else f"missing: {ops.EXTENSION_ERROR}"
    res["env"]["backends"] = ops.backends()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want("tests", 30):
        say("CUDA tests")
        # -v: every test's outcome is printed as it ends, so a run cut short still names its failures
        res["tests"] = sh([sys.executable, "-m", "pytest", "-v", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                          timeout=min(budget.left() - 20, 120), log=outdir / "tests.log")
        say(f"tests rc {res['tests']['rc']}: {last_line(res['tests']['tail'])}")
        save(res)
    try:
        from benchmarks import kernels, train  # they load manifoldadv: after the build; a failure is reported

        if want("kernels", 40):
            shapes = [(64, 3, 32, 32)] if a.dry_run else [(128, 3, 32, 32), (8192, 3, 32, 32), (32768, 1, 28, 28)]
            res["pgd_step"] = kernels.bench_pgd_device(dev, shapes, reps=3 if a.dry_run else 20, log=say)
            res["class_cov"] = kernels.bench_cov_device(dev, [64] if a.dry_run else [784, 3072],
                                                        600 if a.dry_run else 60_000, reps=2 if a.dry_run else 5,
                                                        log=say)
            save(res)
        if want("train", 30):
            res["train"] = train.bench_train_device(dev, budget, dry_run=a.dry_run, reserve=50 if "dist" in only else 0,
                                                    save=lambda rows: save({**res, "train": rows}), log=say)
        if want("dist", 45):
            say("torchrun: 1 and 2 processes")
            res["dist"] = train.bench_dist(dev, budget, outdir, dry_run=a.dry_run, log=say)
            save(res)
        if want("steps", 60):
            res["steps"] = kernels.bench_steps_device(dev, budget, reserve=45, log=say)
    except Exception as exc:
        import traceback

        res["error"] = traceback.format_exc()
        say(f"error: {type(exc).__name__}: {exc}")
    if want("suite", 30):
        say("the rest of the suite (CLI commands run on the GPU: their --device default is auto)")
        workers = ["-n", str(max(1, min(12, (os.cpu_count() or 2) - 2)))] if importlib.util.find_spec("xdist") else []
        # one inductor compile thread per worker: many workers' compile pools may crowd the machine
        # (a suspected cause of workers dying); -v names the test a dying worker was running
        env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
        res["suite"] = sh([sys.executable, "-m", "pytest", "-v", "-m", "not cuda", "-p", "no:cacheprovider",
                           *workers, "tests"], timeout=min(budget.left() - 20, 140), env=env, log=outdir / "suite.log")
        say(f"suite rc {res['suite']['rc']}: {last_line(res['suite']['tail'])}")
        save(res)
    res["seconds"] = time.monotonic() - t_start
    save(res)
    print(report.gpu_table(res))
    failed = (any(res.get(k, {}).get("rc", 0) != 0 for k in ("build", "tests", "suite")) or "error" in res
              or any(r.get("rc", 0) != 0 for r in res.get("dist", [])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
