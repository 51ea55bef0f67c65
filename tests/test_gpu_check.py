"""`make gpu-check` cannot rot between GPU sessions: its --dry-run runs the same sections at tiny
sizes on this CPU (no build, no tests inside the tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    # one thread: on a busy 2-core machine two spinning OpenMP threads cost several times their work
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((tmp_path / "gpu-check.json").read_text())
    assert res["dry_run"] and "error" not in res
    assert {r["norm"] for r in res["pgd_step"]} == {"linf", "l2", "l1"}
    assert all(r["max_abs_err"] <= 1e-6 for r in res["pgd_step"]) and res["class_cov"][0]["max_rel_err"] < 1e-12
    timed = [r for r in res["train"] if "epoch_s" in r]
    assert {(r["model"], r["loop"]) for r in timed} >= {("resnet32", "old"), ("resnet32", "new"), ("lenet5", "old"),
                                                       ("lenet5", "new")}
    # at these sizes both loops warm up on the whole split, then train the same batches (the new
    # loop's window pass): equal losses
    for model in ("resnet32", "lenet5"):
        old = next(r["loss"] for r in timed if r["model"] == model and r["loop"] == "old")
        new = next(r["window_loss"] for r in timed if r["model"] == model and r["loop"] == "new" and r["precision"] == "fp32")
        assert old == new, (old, new)
    assert [(r["rc"], r["world_size"]) for r in res["dist"]] == [(0, 1), (0, 2)]
    assert "GPU check:" in p.stdout and "train resnet32" in p.stdout
