"""Several processes (torchrun, gloo, 2 processes on this CPU) compute what one process computes:
training weights, attack accuracies and spectra; a killed run resumes; a rank that dies ends the
run with one clear line and no partial checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from manifoldadv import checkpoint, training
from manifoldadv.data import load_dataset

from helpers import cli_json, wait_for

ROOT = Path(__file__).resolve().parents[1]

# Each rank runs the CLI; hooks print a marker at the start of each epoch (with the rank and the
# pid) and, for PAUSE_EPOCH, pause there so that a kill lands inside the epoch.
RUNNER = textwrap.dedent("""
    import inspect, os, sys, time
    from manifoldadv.training import loop as training
    from manifoldadv.cli import main
    pause, real = int(os.environ.get("PAUSE_EPOCH", "-1")), training.train_epoch
    epoch_of = lambda a, k: inspect.signature(real).bind(*a, **k).arguments["epoch"]  # noqa: E731

    def epoch(*a, **k):
        e = epoch_of(a, k)
        # one write of a whole line: the ranks share the pipe, and print() writes the newline apart
        os.write(1, f"EPOCH {e} RANK {os.environ.get('RANK', '0')} PID {os.getpid()}\\n".encode())
        if e == pause:
            time.sleep(60)
        return real(*a, **k)

    training.train_epoch = epoch
    sys.argv = ["manifoldadv", *sys.argv[1:]]
    main()
""")


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = tmp_path_factory.mktemp("runner") / "run_manifoldadv.py"
    path.write_text(RUNNER)
    return path


def torchrun(runner, n, *args, env=None, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", str(runner),
           *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
                **(env or {})}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=ROOT,
                         start_new_session=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return out, err


def weights(path):
    return checkpoint.load(path).state_dict()


def max_rel(a, b):
    return max(float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-30)) for k in a)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A classifier and a CVAE to attack with and to train against (one process, in this one)."""
    d = tmp_path_factory.mktemp("dist")
    ds = load_dataset("synthetic", limit=600)
    for mode in ("std", "cvae"):
        cfg = training.resolve_config("synthetic", mode, epochs=2, limit=600)
        training.train(cfg, ds, device="cpu", out=d / f"{mode}.safetensors")
    return d


# Short runs: batches of 75, 75 and 11 rows, split 38 + 37 and 6 + 5 between two processes. A
# process's loss must count for its share of the global batch (a mean per process would weigh each
# of the 6 rows 1/12 and each of the 5 rows 1/10 instead of 1/11).
SHORT = 161
# Why short, and why PGD takes small steps here. One and two processes add the same numbers in
# other orders and through kernels sized for 38 rows rather than 75 (on some CPUs other kernels):
# they agree to rounding, and stay close only while nothing amplifies it. Two things do: a PGD sign
# step, where an input gradient within rounding of 0 flips sign and moves a pixel by two steps, and
# Adam, whose first updates are about lr * sign(gradient). Modelled in one process by adding noise
# of 1e-7 times each gradient's RMS to every nonzero gradient (the attacks' and the weights'), runs
# ended as far from the noiseless run as a wrong loss share does (7e-4 to 1e-2): std over a
# 986-example epoch in 5 of 16 runs; PGD at its own step (2.5 eps / steps) over these three
# batches in 1 of 32, and in 11 of 16 without the eps ramp. With these runs and a PGD step of
# 0.001: none of 64 for pgd (largest 4e-6), none of 16 each for std, vae and cvae (largest 1e-6).
# A flipped sign then moves a pixel by 0.002, next to random starts up to eps = 0.25 drawn for the
# global batch and sliced, which the two processes must share. TOL is 25 times the largest
# difference modelled (on this machine the runs end 2e-7 apart). Broken on purpose, the
# two-process runs ended: each process's own mean loss rather than its share, 5e-3 to 1.3e-2 away
# (every mode); both processes on rank 0's rows, 4e-2 to 6e-2; random starts drawn per process, or
# the attack generator seeded per rank, 3e-2 to 5e-2 (pgd and cvae, the modes that draw).
PGD_STEP = "0.001"
EIGEN_EPS = "0.05"
TOL = 1e-4


def data_args(kind, mode, mnist_root):
    args = ["--limit", SHORT, "--batch-size", "75"] + (["--step-size", PGD_STEP] if mode == "pgd" else [])
    # the eigen attack's l2 steps are continuous, but its clamp to the box is not: a budget of 0.05
    # (steps of 0.025) keeps a rounding-flipped clamp as small as PGD's step (at eps 1 a fresh clone
    # ended 3.7e-3 apart)
    args += ["--eigen-eps", EIGEN_EPS] if mode == "eigen" else []
    if kind == "mnist":
        if not (mnist_root / "train-images-idx3-ubyte.gz").exists():
            pytest.skip("real MNIST not found")
        return ["--data", "mnist", "--data-root", mnist_root, "--steps", "10", *args]
    if kind == "npz":  # a user's data: the synthetic set's arrays through npz:
        path = Path(os.environ["MANIFOLDADV_CACHE"]).parent / "d.npz"  # in the test's tmp_path (conftest)
        ds = load_dataset("synthetic", limit=SHORT)
        np.savez(path, x_train=ds.train.x.numpy(), y_train=ds.train.y.numpy(), x_test=ds.test.x.numpy(),
                 y_test=ds.test.y.numpy())
        return ["--data", f"npz:{path}", "--steps", "5", *args]
    return ["--data", "synthetic", "--steps", "5", *args]


MNIST = pytest.mark.mnist


# every mode once and every kind of data once (std runs on the npz copy of the synthetic set; each
# case launches three processes, whose start-up is most of its time)
@pytest.mark.parametrize("kind,mode", [("npz", "std"), ("synthetic", "pgd"), ("synthetic", "vae"), ("synthetic", "cvae"),
                                       ("synthetic", "eigen"), pytest.param("mnist", "pgd", marks=MNIST)])
def test_two_processes_train_what_one_trains(tmp_path, runner, mnist_root, models, kind, mode):
    # --adv-start 0: every batch adversarial, its eps ramping up over the epoch (--eps-warmup 1)
    args = ["train", *data_args(kind, mode, mnist_root), "--mode", mode, "--epochs", "1", "--adv-start", "0",
            "--device", "cpu", "--json"]
    if mode == "vae":  # latent FGSM (no random start) through the CVAE, on each process's rows
        args += ["--cvae", models / "cvae.safetensors"]
    out = {}
    for n in (1, 2):
        path = tmp_path / f"{n}.safetensors"
        if n == 1:  # one process: a plain run, here (torchrun with one process is the same run)
            meta = cli_json(*args, "--out", path)
        else:
            stdout, _ = torchrun(runner, n, *args, "--out", path)
            meta = json.loads(stdout[stdout.index("{"):])  # rank 0 alone prints the document
        assert meta["world_size"] == n and checkpoint.load(path).meta["world_size"] == n
        out[n] = (weights(path), meta)
    (w1, m1), (w2, m2) = out[1], out[2]
    # one gradient sum split in two and added: rounding apart, the same training (see TOL)
    assert max_rel(w1, w2) <= TOL
    loss = [m["history"][0]["train_loss"] for m in (m1, m2)]
    # float32 sums of each batch's losses in other orders (the modelled runs: 4e-8 apart at most);
    # relative, as a CVAE's NELBO is in the thousands
    assert loss[1] == pytest.approx(loss[0], rel=1e-6)
    if mode == "cvae":
        assert m1["test_nelbo"] == pytest.approx(m2["test_nelbo"], rel=1e-6)
    else:  # weights this close can part only a test example whose two top logits tie to 1e-4
        assert abs(m1["clean_accuracy"] - m2["clean_accuracy"]) <= 1 / m1["n_test"]


@pytest.mark.slow
def test_attack_and_spectrum_agree_with_one_process(runner, models):
    std, cvae = models / "std.safetensors", models / "cvae.safetensors"
    attack = ["attack", std, "--attacks", "clean,pgd,l1,vae,eigen,eigen-off", "--cvae", cvae, "--limit", "240", "--steps", "3",
              "--batch-size", "60", "--device", "cpu", "--json"]  # 4 batches: 2 per process
    spectrum = ["spectrum", std, "--classes", "0,1,2", "--limit", "600", "--batch-size", "70", "--device", "cpu",
                "--json"]
    acc, spectra, shares = {}, {}, {}
    for n in (1, 2):  # one process: a plain run, here
        docs = [cli_json(*args) if n == 1 else json.loads(torchrun(runner, n, *args)[0]) for args in (attack, spectrum)]
        acc[n] = [(r["attack"], r["accuracy"], r.get("recon_accuracy")) for r in docs[0]["results"]]
        shares[n] = [r["subspace_share"] for r in docs[0]["results"] if "subspace_share" in r]
        spectra[n] = docs[1]
    assert acc[1] == acc[2]  # whole batches dealt to the ranks, each with its own generator
    assert len(shares[1]) == 2 and shares[2] == pytest.approx(shares[1], rel=1e-12)  # sums in another order
    for a, b in zip(spectra[1]["sets"], spectra[2]["sets"]):
        ea, eb = np.array(a["eigenvalues"]), np.array(b["eigenvalues"])
        assert (a["name"], a["class"]) == (b["name"], b["class"])
        assert np.abs(ea - eb).max() <= 1e-10 * np.abs(ea).max()
    # the ranks really split the work: more than one batch per process
    first = spectra[1]["sets"][0]["name"]
    assert sum(s["n"] for s in spectra[1]["sets"] if s["name"] == first) > 2 * 70


ARGS = ["train", "--data", "synthetic", "--mode", "pgd", "--limit", "192", "--batch-size", "64", "--epochs", "3",
        "--adv-start", "1", "--steps", "2", "--device", "cpu"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, runner):
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    torchrun(runner, 2, *ARGS, "--out", full)
    p = torchrun(runner, 2, *ARGS, "--out", part, env={"PAUSE_EPOCH": "2"}, wait=False)
    wait_for(p, "EPOCH 2")
    os.killpg(p.pid, signal.SIGKILL)  # the launcher and both ranks, in the middle of epoch 3
    p.wait()
    assert checkpoint.load(part).meta["epoch"] == 2
    torchrun(runner, 2, *ARGS, "--out", part, "--resume")
    a, b = weights(full), weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_rank_that_dies_ends_the_run_with_one_line(tmp_path, runner):
    out = tmp_path / "m.safetensors"
    p = torchrun(runner, 2, *ARGS, "--out", out, env={"PAUSE_EPOCH": "1"}, wait=False)
    seen = {}
    while len(seen) < 2:  # both ranks inside epoch 2 (0-based 1), epoch 1 saved
        words = wait_for(p, "EPOCH 1")
        seen[words[3]] = int(words[5])
    t0 = time.monotonic()
    os.kill(seen["1"], signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and time.monotonic() - t0 < 90
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines == [f"error: another process of this run stopped (SIGTERM); interrupted in epoch 2/3 of training "
                     f"{out}; epoch 1 is saved in {out}; rerun with --resume to continue from it"], err[-3000:]
    assert checkpoint.load(out).meta["epoch"] == 1 and not list(tmp_path.glob(".*.tmp"))


def test_an_unknown_backend_is_one_line_per_process(tmp_path, runner):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(runner),
           "train", "--data", "synthetic", "--limit", "100", "--device", "cpu", "--out", str(tmp_path / "m.safetensors")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MANIFOLDADV_DIST_BACKEND": "mpi"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert p.returncode != 0 and lines == ["error: MANIFOLDADV_DIST_BACKEND=mpi: choose nccl or gloo"] * 2, p.stderr
    # torchrun's own traceback follows; none from the ranks (it would name our modules)
    assert "manifoldadv/" not in p.stderr and not list(tmp_path.iterdir())


def _resume_from(rank, init, epochs, results):
    import torch.distributed as dist

    from manifoldadv.training import loop as training
    from manifoldadv.errors import CheckpointError

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        training._same_start_everywhere(Path("m.safetensors"), epochs[rank], torch.device("cpu"))
        results.put((rank, "ok"))
    except CheckpointError as exc:
        results.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("epochs", [(2, 2), (2, 0)])
def test_processes_that_see_different_checkpoints_refuse_to_resume(tmp_path, epochs):
    # a second machine without the first one's file system would start over while rank 0 resumes
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(_resume_from, args=(f"file://{tmp_path / 'rdzv'}", epochs, results),
                                          nprocs=2, start_method="spawn")
    got = dict(results.get() for _ in range(2))
    if epochs[0] == epochs[1]:
        assert got == {0: "ok", 1: "ok"}
    else:
        assert got[0] == got[1] and "different epochs (2, 0 by rank)" in got[0] and "share" in got[0]


def test_a_usage_error_under_torchrun_is_said_once(tmp_path, runner):
    """Every process finds the same bad argument: the first alone says it, every one exits 2."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(runner),
           "train", "--data", "synthetic", "--epochs", "0", "--out", str(tmp_path / "m.safetensors")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "--epochs" in lines[0], p.stderr
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", p.stderr)  # torchrun's summary of its failed processes
    assert p.returncode != 0 and "2" in codes and set(codes) <= {"2", "-15"}, p.stderr[-3000:]
    assert not list(tmp_path.iterdir())
