"""Small builders shared by the tests: IDX and CIFAR files in the real layouts, CLI runs, and
waiting for a child process's marker line."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import signal
import struct
import threading
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from manifoldadv.cli import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def cli_json(*args):
    r = cli(*args, "--json")
    assert r.exit_code == 0, f"exit {r.exit_code}\nstderr: {r.stderr}\nstdout: {r.stdout}"
    return json.loads(r.stdout)


def assert_error(result, code: int, *needles) -> str:
    """Exit `code`, exactly one `error:` line and it last (earlier lines may only be progress
    logs), no traceback, every needle in that line; returns the line."""
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    lines = result.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def assert_usage_error(result, *needles):
    return assert_error(result, 2, *needles)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_fake_mnist(root: Path, n_train=40, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, gz)
        arrays[prefix] = (x, y)
    return arrays


def write_fake_cifar(root: Path, per_batch=12, seed=0):
    """Five training batches and a test batch, pickled like the real cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        obj = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
               b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        with open(base / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        out[name] = (data, labels)
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}, protocol=2))
    return out


def kill_child(proc) -> None:
    """SIGKILL a child started by a test: its whole process group when it leads one (started with
    start_new_session, as torchrun and its ranks are), else the process alone."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass


def wait_for(proc, marker: str, timeout: float = 120) -> list[str]:
    """Read `proc`'s stdout (text mode) until a line whose first words are `marker`'s words; returns
    that line's words. A child that neither prints it nor exits within `timeout` seconds is killed
    (a watchdog: a silent child cannot hang the test); then, or when its stdout ends first, fails
    with the end of its stderr."""
    want = marker.split()
    timer = threading.Timer(timeout, kill_child, args=(proc,))
    timer.start()
    try:
        for line in proc.stdout:
            words = line.split()
            if words[:len(want)] == want:
                return words
    finally:
        timer.cancel()
    kill_child(proc)
    proc.wait()
    raise AssertionError(f"never saw {marker!r} (rc {proc.returncode}, {timeout:g} s): {proc.stderr.read()[-3000:]}")
