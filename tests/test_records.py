"""What made a result is recorded with it: the code's commit, the data a model really saw, and the
CVAE a latent attack used (a replaced CVAE cannot resume a model or reuse its evaluations)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from manifoldadv import checkpoint
from manifoldadv.runtime import host, versions

from helpers import assert_usage_error, cli, cli_json

SYN = ["--data", "synthetic", "--limit", "64", "--device", "cpu"]
PACKAGE = Path(host.__file__).resolve().parents[1]


def in_git_checkout() -> bool:
    """Whether the code runs from a git checkout (not, say, an unpacked source tarball)."""
    try:
        return subprocess.run(["git", "-C", str(PACKAGE), "rev-parse", "HEAD"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not in_git_checkout(), reason="not a git checkout: nothing to name")
def test_versions_name_the_commit_and_whether_the_tree_was_clean():
    v = versions()
    assert re.fullmatch(r"[0-9a-f]{12}", v["commit"]) and isinstance(v["dirty"], bool)


@pytest.fixture
def fresh_git_state():
    """git_state is read once per process: forget it before and after the test."""
    host.git_state.cache_clear()
    yield
    host.git_state.cache_clear()


@pytest.mark.parametrize("without", ["repository", "git"])
def test_without_git_the_commit_is_unknown_not_an_error(tmp_path, monkeypatch, fresh_git_state, without):
    """An unpacked source tarball (no repository), or no git program at all: the record says the
    commit and the tree's state are unknown (null), and training still records them."""
    if without == "git":
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # `git` is not found
    else:
        monkeypatch.setenv("GIT_DIR", str(tmp_path / "no-repository"))
    v = versions()
    assert v["commit"] is None and v["dirty"] is None and v["torch"]
    meta = cli_json("train", *SYN, "--epochs", "1", "--out", tmp_path / "m.safetensors")
    assert meta["versions"]["commit"] is None and meta["versions"]["dirty"] is None
    assert checkpoint.load(tmp_path / "m.safetensors").meta["versions"]["commit"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git program")
def test_only_the_top_of_a_checkout_names_a_commit(tmp_path):
    """A source tree unpacked inside someone else's repository records no commit (not theirs)."""
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "theirs")
    theirs = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    (tmp_path / "unpacked").mkdir()
    assert host.checkout_state(tmp_path) == (theirs, False)
    assert host.checkout_state(tmp_path / "unpacked") == (None, None)


def test_checkpoint_records_the_data_it_saw(tmp_path):
    meta = cli_json("train", *SYN, "--epochs", "1", "--out", tmp_path / "m.safetensors")
    assert meta["n_train"] == 64 and meta["n_test"] == 64 and meta["versions"]["commit"] == versions()["commit"]


def test_a_replaced_cvae_cannot_resume_a_model(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    cli_json("train", *SYN, "--mode", "cvae", "--epochs", "1", "--out", a)
    cli_json("train", *SYN, "--mode", "cvae", "--epochs", "1", "--seed", "1", "--out", b)
    out = tmp_path / "vae.safetensors"
    args = ["train", *SYN, "--mode", "vae", "--epochs", "2", "--adv-start", "1", "--out", out]
    meta = cli_json(*args, "--cvae", a)
    assert meta["hparams"]["cvae_sha256"] == checkpoint.digest(a)
    shutil.copy(b, a)  # the same path, another CVAE
    assert_usage_error(cli(*args, "--cvae", a, "--resume"), "different settings", "cvae_sha256")


def test_evaluations_of_a_latent_attack_follow_the_cvae(tmp_path):
    """reproduce caches evaluations by checkpoint and settings; a latent attack's also by its CVAE."""
    from manifoldadv.study import Study
    from manifoldadv.data import load_dataset

    run = tmp_path / "run"
    ds = load_dataset("synthetic", limit=60)
    study = Study("synthetic", run, "cpu", quick=True)
    first = study.accuracy("std", "vae", ds)
    again = study.accuracy("std", "vae", ds)
    assert again == first and "seconds" in again  # cached: the same row
    cvae = study.path("cvae")
    meta = checkpoint.load(cvae)
    model, _ = checkpoint.load_model(cvae, kind="cvae")
    for p in model.parameters():
        p.data.mul_(0.5)
    checkpoint.save(cvae, model, meta.meta)
    import json

    evals = run / "results" / "evals.json"
    assert len(json.loads(evals.read_text())["entries"]) == 1
    study.accuracy("std", "vae", ds)
    assert len(json.loads(evals.read_text())["entries"]) == 2  # the replaced CVAE made a second row: none was reused
