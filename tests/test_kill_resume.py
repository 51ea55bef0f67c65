"""Real processes killed for real: SIGKILL in the middle of an epoch and in the middle of a save,
then --resume, must end with the weights of an uninterrupted run, bit for bit; SIGINT must print
what was interrupted and what is kept. The child runs `manifoldadv train` with hooks that print
a marker when it reaches the moment to kill (they change nothing else); the uninterrupted run and
the last resume, which nothing kills, run in the test's own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from manifoldadv import checkpoint

from helpers import cli_json, wait_for

ARGS = ["train", "--data", "synthetic", "--mode", "pgd", "--limit", "192", "--batch-size", "32", "--epochs", "3",
        "--adv-start", "1", "--steps", "2", "--device", "cpu", "--seed", "5"]

# Hooks the child installs before running the CLI: a marker line on stdout at the start of each
# epoch (and a pause, so a kill lands inside it), and, for the save of epoch SLOW_SAVE, a pause
# after the temporary file is complete and before it is renamed over the checkpoint.
CHILD = textwrap.dedent("""
    import inspect, os, sys, time
    import torch
    torch.set_num_threads(1)
    from manifoldadv.training import loop as training
    from manifoldadv.entry import main  # the console script's entry: its signal handling
    slow_save, pause_epoch = int(os.environ.get("SLOW_SAVE", "0")), int(os.environ.get("PAUSE_EPOCH", "-1"))
    real_epoch, real_replace, saves = training.train_epoch, os.replace, []
    epoch_of = lambda a, k: inspect.signature(real_epoch).bind(*a, **k).arguments["epoch"]  # noqa: E731

    def epoch(*a, **k):
        e = epoch_of(a, k)
        print(f"EPOCH {e}", flush=True)
        if e == pause_epoch:
            time.sleep(30)
        return real_epoch(*a, **k)

    def replace(src, dst):
        if str(dst).endswith(".safetensors"):
            saves.append(dst)
            if len(saves) == slow_save:
                print("SAVING", flush=True)
                time.sleep(30)
        return real_replace(src, dst)

    training.train_epoch, os.replace = epoch, replace
    sys.argv = ["manifoldadv", *sys.argv[1:]]
    main()
""")


def default_sigint():
    """In the child: SIGINT back to its default. A shell's background job starts with SIGINT
    ignored, the children inherit that and Python then installs no KeyboardInterrupt handler: the
    tests would measure the shell, not the program."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child(args, **env):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    return subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, cwd=Path(__file__).resolve().parents[1],
                            preexec_fn=default_sigint)


def weights(path):
    return checkpoint.load(path).state_dict()


def temporaries(folder):
    return sorted(p.name for p in Path(folder).glob(".*.tmp"))


def test_sigkill_mid_epoch_and_mid_save_then_resume_is_bit_identical(tmp_path):
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    cli_json(*ARGS, "--out", full)  # uninterrupted, in this process (the same computation, one thread)

    # killed while writing epoch 2's checkpoint: epoch 1 stays whole, a full-size temporary is left
    p = child([*ARGS, "--out", part], SLOW_SAVE=2)
    wait_for(p, "SAVING")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert checkpoint.load(part).meta["epoch"] == 1
    left = temporaries(tmp_path)
    assert len(left) == 1 and (tmp_path / left[0]).stat().st_size > part.stat().st_size // 2

    # resumed, then killed in the middle of epoch 3 (0-based 2): its first save removes that
    # temporary, and epoch 2 is on disk when the kill comes
    p = child([*ARGS, "--out", part, "--resume"], PAUSE_EPOCH=2)
    wait_for(p, "EPOCH 2")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert checkpoint.load(part).meta["epoch"] == 2 and temporaries(tmp_path) == []

    cli_json(*ARGS, "--out", part, "--resume")  # the last resume needs no process of its own
    a, b = weights(full), weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = checkpoint.load(full).meta["history"], checkpoint.load(part).meta["history"]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_says_what_was_interrupted_and_what_is_kept(tmp_path, sig, code):
    out = tmp_path / "m.safetensors"
    p = child([*ARGS, "--out", out], PAUSE_EPOCH=1)
    wait_for(p, "EPOCH 1")
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err[-2000:]
    lines = err.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error: ")] == [lines[-1]] and "Traceback" not in err
    assert lines[-1] == (f"error: interrupted in epoch 2/3 of training {out}; epoch 1 is saved in {out}; "
                         f"rerun with --resume to continue from it")
    assert checkpoint.load(out).meta["epoch"] == 1 and temporaries(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_sigint_during_a_save_keeps_a_whole_checkpoint(tmp_path, sig):
    out = tmp_path / "m.safetensors"
    p = child([*ARGS, "--out", out], SLOW_SAVE=2)
    wait_for(p, "SAVING")
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"error: interrupted while saving epoch 2 to {out}; {out} holds epoch 1 "
                                            f"or 2, whole; rerun with --resume")
    assert checkpoint.load(out).meta["epoch"] == 1 and temporaries(tmp_path) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_while_starting_is_one_line(tmp_path, sig, code):
    """The first seconds go to importing torch: an interrupt there is answered too."""
    script = "print('UP', flush=True)\nimport sys\nsys.argv = ['manifoldadv', 'info']\nfrom manifoldadv.entry import main\nmain()"
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[1], preexec_fn=default_sigint)
    wait_for(p, "UP")
    time.sleep(0.5)  # past the few milliseconds of importing the entry point, inside torch's seconds
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code and err == "error: interrupted while starting; nothing was written\n", err[-2000:]
