"""Benchmarks of the compiled manifoldadv kernels (CPU): `make bench`, or

    python bench/run.py [--json] [--out results.json] [--quick] [--no-compile]

pgd_step, per norm and size: the fused kernel (new tensor, and in place) against the eager
PyTorch reference (manifoldadv.ops.pgd_step_reference), torch.compile of that reference, and
the byte limit: a preallocated 3-read-1-write torch.addcmul(x, x0, g, out=o) of the same size.
Per-class covariance (10 classes, 60k rows, d = 784 and 3072): the fused op (update + finalize)
against a float64 per-class numpy np.cov loop and numpy's float64 X.T @ X over the same rows.

Attacks (`--only attack`): a PGD-40 attack on LeNet5 through the fused engine, the eager path
and torchattacks (bench/benchmarks/attack.py), and MNIST PGD-adv training with the engine on
and off.

End to end (`--only train`): adversarial-training throughput (images/s through PGD-K, batch
128) of LeNet5 on MNIST-shaped and ResNet32 on CIFAR-shaped (augmented) data, the training loop
(`manifoldadv.training.train_epoch`) against the loop it replaced (bench/legacy_loop.py).

Every number is a ratio taken within one run: the variants of one row are timed round-robin
(so load changes hit them alike), after warm-up, median of the repeats, and the inputs rotate
over enough distinct sets (>= 96 MiB together) that no variant reads them from cache. The
covariance half runs first (see main). The benchmarks themselves are in bench/benchmarks/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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
from benchmarks import attack, common, kernels, report, train  # noqa: E402
from manifoldadv import ops  # noqa: E402

SIZES = [(128, 1, 28, 28), (1024, 1, 28, 28), (256, 3, 32, 32), (1024, 3, 32, 32)]


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print JSON (no table)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller covariance (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    p.add_argument("--only", choices=["pgd", "cov", "train", "attack"], help="run one part")
    p.add_argument("--threads", type=int, help="torch / BLAS threads (default: torch's default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time (default) or process CPU time (only meaningful with --threads 1)")
    p.add_argument("--load", help="render a saved JSON result instead of running")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    a = p.parse_args(argv)
    if a.load:
        res = json.loads(Path(a.load).read_text())
        print(report.markdown(res) if a.markdown else "", end="\n" if a.markdown else "")
        if not a.markdown:
            report.print_tables(res)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.clock == "cpu":
        if torch.get_num_threads() != 1:
            sys.exit("--clock cpu needs --threads 1")
        common.set_clock("cpu")
    if not ops.extension_loaded():
        sys.exit(f"manifoldadv._C is not built ({ops.EXTENSION_ERROR}); run `make setup`")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    t0 = time.time()
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(), "clock": a.clock,
           "command": " ".join([Path(sys.executable).name] + sys.argv), "pgd_step": [], "threads": [],
           "covariance": [], "train": [], "attack": [], "train_engine": []}
    sizes = SIZES[:1] + SIZES[-1:] if a.quick else SIZES
    # The covariance half first, while the process holds nothing but its imports: its variants
    # allocate 1.5-2.2 GB of fresh memory per call, and what that costs depends on what else holds
    # memory (beside the pgd half's 1.3 GB of inputs, the np.cov-loop / fused ratio at d = 3072
    # measured 1.13 against 1.44 alone).
    if a.only in (None, "cov"):
        res["covariance"] = kernels.bench_cov_cpu([784, 3072], 12_000 if a.quick else 60_000, quick=a.quick, log=log)
    if a.only in (None, "pgd"):
        res["pgd_step"] = kernels.bench_pgd_cpu(sizes, list(kernels.NORMS), quick=a.quick,
                                                use_compile=not a.no_compile, log=log)
        if torch.get_num_threads() > 1:
            res["threads"] = kernels.bench_threads_cpu(list(kernels.NORMS), SIZES[-1], quick=a.quick, log=log)
    if a.only in (None, "train"):
        res["train"] = train.bench_train_cpu(quick=a.quick, log=log)
    if a.only in (None, "attack"):
        res["attack"] = attack.bench_attack_cpu(quick=a.quick, log=log)
        res["train_engine"] = attack.bench_train_engine_cpu(quick=a.quick, log=log)
    res["targets"] = report.cpu_targets(res)
    res["loadavg_end"] = os.getloadavg()
    res["seconds"] = time.time() - t0
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.json:
        print(text)
    elif a.markdown:
        print(report.markdown(res))
    else:
        report.print_tables(res)


if __name__ == "__main__":
    main()
