"""Bad inputs, broken files and interruptions, across every command and the Python API.

Each CLI case asserts the exit code, exactly one `error:` line on stderr (the last line), no
traceback, the words that say what is wrong, and that no file appeared but the ones the case
expects to be kept. The classes follow the reliability issue: checkpoint metadata, output paths,
interruptions, temporary files, silent substitutions, divergence, data-set consistency, corrupt
caches, contradictory flags, the Python API; and plain bad arguments of every command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from manifoldadv import checkpoint, ops
from manifoldadv.training import loop as training  # the loop module: hooks replace its functions
from manifoldadv.runtime import outputs
from manifoldadv.attacks import make_spec
from manifoldadv.errors import UsageError
from manifoldadv.training import resolve_config

from helpers import assert_error, cli, cli_json, write_fake_mnist

SYN = ["--data", "synthetic", "--limit", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """Checkpoints the cases start from: a synthetic classifier and CVAE, an MNIST-shaped CVAE."""
    d = tmp_path_factory.mktemp("artefacts")
    cli_json("train", *SYN, "--mode", "std", "--epochs", "1", "--out", d / "clf.safetensors")
    cli_json("train", *SYN, "--mode", "cvae", "--epochs", "1", "--out", d / "cvae.safetensors")
    write_fake_mnist(d / "mnist", n_train=40, n_test=20)
    cli_json("train", "--data", "mnist", "--data-root", d / "mnist", "--limit", "40", "--device", "cpu",
             "--mode", "cvae", "--epochs", "1", "--out", d / "mnist-cvae.safetensors")
    return d


def with_meta(src: Path, dst: Path, **changes) -> Path:
    """A copy of checkpoint `src` whose metadata has `changes` (value None: the key removed)."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["manifoldadv"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    save_file(tensors, str(dst), metadata={"manifoldadv": json.dumps(meta)})
    return dst


def meta_case(where, **changes):
    def setup(tmp, art):
        bad = with_meta(art / ("cvae.safetensors" if where == "cvae" else "clf.safetensors"),
                        tmp / "bad.safetensors", **changes)
        if where == "attack":
            return ["attack", bad, "--attacks", "clean", "--limit", "8", "--device", "cpu"]
        if where == "spectrum":
            return ["spectrum", bad, "--classes", "0", "--limit", "50", "--device", "cpu"]
        if where == "resume":
            shutil.copy(bad, tmp / "run.safetensors")
            (tmp / "bad.safetensors").unlink()
            return ["train", *SYN, "--mode", "std", "--epochs", "2", "--out", tmp / "run.safetensors", "--resume"]
        return ["train", *SYN, "--mode", "vae", "--epochs", "2", "--adv-start", "1", "--cvae", bad,
                "--out", tmp / "v.safetensors"]
    return setup


def nan_weights(tmp, art):
    """A copy of the classifier with one NaN in its first weight tensor."""
    with safe_open(str(art / "clf.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k in tensors if k.startswith("model/") and tensors[k].is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(tmp / "nan.safetensors"), metadata=meta)
    return tmp / "nan.safetensors"


def plain(*args):
    return lambda tmp, art: [a(tmp, art) if callable(a) else a for a in args]


def a_file(name):
    """A path in the case's folder holding a plain file (where a folder is needed)."""
    def make(tmp, art):
        p = tmp / name
        p.write_text("not a folder")
        return p
    return make


def a_folder(name):
    def make(tmp, art):
        p = tmp / name
        p.mkdir()
        return p
    return make


def art_path(name):
    return lambda tmp, art: art / name


@dataclass
class Case:
    id: str
    kind: str  # the class of defect
    setup: Callable
    code: int = 2
    needles: tuple = ()
    kept: tuple = ()  # files the case legitimately leaves (relative to its folder)
    patch: Callable | None = None  # (monkeypatch) -> None, before the command runs


def mnist_basis(tmp, art):
    """An eigenbasis file of MNIST (k 6, the synthetic set's default), for a synthetic run."""
    from manifoldadv.evaluation import eigenbasis

    q, _ = torch.linalg.qr(torch.randn(10, 784, 6, dtype=torch.float64))
    basis = eigenbasis.EigenBasis("mnist", "0" * 16, 6, q, torch.ones(10, 6, dtype=torch.float64),
                                  torch.full((10,), 100), torch.full((10,), 10.0, dtype=torch.float64))
    eigenbasis.save(tmp / "mnist-basis.safetensors", basis)
    return tmp / "mnist-basis.safetensors"


def under_file(name, rest):
    return lambda tmp, art: (a_file(name)(tmp, art) / rest)


CASES = [
    # 1. malformed checkpoint metadata: one line naming the file and the field
    Case("meta-num-classes-string", "metadata", meta_case("attack", num_classes="ten"), needles=("bad.safetensors", "num_classes")),
    Case("meta-missing-model", "metadata", meta_case("attack", model=None), needles=("bad.safetensors", "'model'")),
    Case("meta-unknown-model", "metadata", meta_case("attack", model="vgg99"), needles=("'model'",)),
    Case("meta-short-in-shape", "metadata", meta_case("spectrum", in_shape=[1, 28]), needles=("in_shape",)),
    Case("meta-mean-per-channel", "metadata", meta_case("attack", mean=[0.1, 0.2, 0.3]), needles=("'mean'", "1 entries")),
    Case("meta-kind-other", "metadata", meta_case("attack", kind="regressor"), needles=("'kind'",)),
    Case("meta-cvae-kwargs", "metadata", meta_case("cvae", model_kwargs={"bogus": 1}), needles=("model_kwargs",)),
    Case("meta-history-string", "metadata", meta_case("resume", history="none"), needles=("'history'",),
         kept=("run.safetensors",)),
    Case("meta-epoch-float", "metadata", meta_case("resume", epoch=1.5), needles=("'epoch'",), kept=("run.safetensors",)),
    # 2. output paths: refused before any work, naming the path and the reason
    Case("train-out-under-file", "io", plain("train", *SYN, "--out", under_file("f", "m.safetensors")),
         needles=("f is a file",), kept=("f",)),
    Case("train-out-is-folder", "io", plain("train", *SYN, "--out", a_folder("d")), needles=("is a directory",)),
    Case("train-out-unwritable", "io", plain("train", *SYN, "--out", "/proc/m.safetensors"), needles=("/proc/m.safetensors",)),
    Case("spectrum-plot-under-file", "io", plain("spectrum", *SYN, "--classes", "0", "--plot", under_file("f", "s.png")),
         needles=("plot",), kept=("f",)),
    Case("spectrum-csv-is-folder", "io", plain("spectrum", *SYN, "--classes", "0", "--csv", a_folder("d")),
         needles=("is a directory",)),
    Case("tradeoff-run-dir-under-file", "io", plain("tradeoff", "--data", "synthetic", "--quick", "--run-dir",
                                                    under_file("f", "run")), needles=("run folder",), kept=("f",)),
    Case("reproduce-run-dir-unwritable", "io", plain("reproduce", "--quick", "--run-dir", "/proc/run"),
         needles=("/proc/run",)),
    Case("theory-plot-under-file", "io", plain("theory", "plot", under_file("f", "t.png")), needles=("plot",),
         kept=("f",)),
    # 5. user values honoured or refused, never replaced
    Case("lr-zero", "substitution", plain("train", *SYN, "--lr", "0"), needles=("--lr",)),
    Case("adv-start-not-below-epochs", "substitution", plain("train", *SYN, "--mode", "pgd", "--epochs", "2",
                                                             "--adv-start", "2"), needles=("no adversarial epoch",)),
    Case("default-adv-start-leaves-none", "substitution", plain("train", *SYN, "--mode", "fgsm", "--epochs", "1"),
         needles=("default --adv-start",)),
    Case("eps-warmup-too-long", "substitution", plain("train", *SYN, "--mode", "pgd", "--epochs", "2", "--adv-start",
                                                      "1", "--eps-warmup", "2"), needles=("--eps-warmup",)),
    Case("batch-size-zero", "substitution", plain("train", *SYN, "--batch-size", "0"), needles=("--batch-size",)),
    # 7. every component's data set
    Case("spectrum-cvae-other-data", "consistency", plain("spectrum", art_path("clf.safetensors"), "--attack", "vae",
                                                          "--cvae", art_path("mnist-cvae.safetensors"), "--classes",
                                                          "0", "--limit", "50", "--device", "cpu"),
         needles=("trained on mnist, not synthetic",)),
    Case("attack-cvae-other-data", "consistency", plain("attack", art_path("clf.safetensors"), "--attacks", "vae",
                                                        "--cvae", art_path("mnist-cvae.safetensors"), "--limit", "8",
                                                        "--device", "cpu"), needles=("not synthetic",)),
    Case("train-cvae-other-data", "consistency", plain("train", *SYN, "--mode", "vae", "--epochs", "2", "--adv-start",
                                                       "1", "--cvae", art_path("mnist-cvae.safetensors")),
         needles=("not synthetic",)),
    Case("spectrum-mixed-data", "consistency",
         lambda tmp, art: ["spectrum", art / "clf.safetensors", with_meta(art / "clf.safetensors", tmp / "m.safetensors",
                                                                         dataset="mnist"), "--device", "cpu"],
         needles=("different data sets",)),
    # 9. contradictory flags and advice
    Case("resume-and-force", "advice", lambda tmp, art: ["train", *SYN, "--out", shutil.copy(art / "clf.safetensors", tmp / "c.safetensors"),
                                                         "--resume", "--force"], needles=("give one of them",),
         kept=("c.safetensors",)),
    Case("resume-changed-settings", "advice", lambda tmp, art: ["train", *SYN, "--epochs", "1", "--lr", "0.01", "--out",
                                                                shutil.copy(art / "clf.safetensors", tmp / "c.safetensors"),
                                                                "--resume"],
         needles=("different settings", "drop --resume"), kept=("c.safetensors",)),
    Case("exists-without-flags", "advice", lambda tmp, art: ["train", *SYN, "--epochs", "1", "--out",
                                                             shutil.copy(art / "clf.safetensors", tmp / "c.safetensors")],
         needles=("--resume", "--force"), kept=("c.safetensors",)),
    # 10. no silent garbage: non-finite weights refused at load, naming the file and the tensor
    Case("attack-nan-weights", "finite", plain("attack", nan_weights, "--attacks", "clean,fgsm", "--limit", "8",
                                               "--device", "cpu"), needles=("nan.safetensors", "NaN"),
         kept=("nan.safetensors",)),
    Case("spectrum-nan-weights", "finite", plain("spectrum", nan_weights, "--classes", "0", "--limit", "50",
                                                 "--device", "cpu"), needles=("nan.safetensors", "tensor 'net."),
         kept=("nan.safetensors",)),
    # 11. an output's format checked before any work
    Case("spectrum-plot-txt", "io", plain("spectrum", *SYN, "--classes", "0", "--plot", "fig.txt"),
         needles=("fig.txt", ".png")),
    Case("theory-plot-txt", "io", plain("theory", "plot", "t.txt"), needles=("t.txt", ".png")),
    # 12. a path that exists but is no checkpoint file
    Case("attack-checkpoint-is-folder", "arguments", plain("attack", a_folder("d.safetensors"), "--device", "cpu"),
         needles=("is a directory",)),
    Case("attack-checkpoint-is-device", "arguments", plain("attack", "/dev/zero", "--device", "cpu"),
         needles=("not a regular file",)),
    # 13. bounded work
    Case("attack-steps-huge", "arguments", plain("attack", art_path("clf.safetensors"), "--attacks", "pgd", "--steps",
                                                 str(10**21), "--limit", "8", "--device", "cpu"), needles=("steps",)),
    # 14. the class eigenspace: k above the dimension, a class with no more than k examples, a
    # basis of another data set
    Case("attack-eigen-k-above-dimension", "arguments",
         plain("attack", art_path("clf.safetensors"), "--attacks", "eigen", "--k", "5000", *SYN[2:]),
         needles=("5000", "dimension 784")),
    Case("attack-eigen-class-too-small", "arguments",
         plain("attack", art_path("clf.safetensors"), "--attacks", "eigen-off", "--k", "20", *SYN[2:]),
         needles=("training examples", "more than 20")),
    Case("train-eigen-class-too-small", "arguments", plain("train", *SYN, "--mode", "eigen", "--k", "20"),
         needles=("training examples", "more than 20")),
    Case("attack-eigen-basis-of-mnist", "consistency",
         plain("attack", art_path("clf.safetensors"), "--attacks", "eigen", "--basis", mnist_basis, *SYN[2:]),
         needles=("eigenbasis of mnist", "not of synthetic"), kept=("mnist-basis.safetensors",)),
    Case("train-k-without-eigenspace", "arguments", plain("train", *SYN, "--mode", "pgd", "--k", "5"),
         needles=("--k", "pgd")),
    # plain bad arguments of every command
    Case("attack-unknown-attack", "arguments", plain("attack", art_path("clf.safetensors"), "--attacks", "pgd,warp"),
         needles=("warp",)),
    Case("attack-missing-checkpoint", "arguments", plain("attack", "missing.safetensors"), needles=("not found",)),
    Case("spectrum-bad-classes", "arguments", plain("spectrum", *SYN, "--classes", "0,42"), needles=("--classes",)),
    Case("info-bad-device", "arguments", plain("info", "--device", "tpu"), needles=("--device",)),
    Case("reproduce-unknown-data", "arguments", plain("reproduce", "--data", "svhn"), needles=("--data",)),
    Case("tradeoff-bad-strategy", "arguments", plain("tradeoff", "--strategy", "min"), needles=("--strategy",)),
    Case("theory-bad-spectrum", "arguments", plain("theory", "excess-risk", "--eigenvalues", "1,x"),
         needles=("eigenvalues",)),
    Case("train-bad-precision", "arguments", plain("train", *SYN, "--precision", "fp8"), needles=("--precision",)),
    Case("train-unknown-model", "arguments", plain("train", *SYN, "--model", "vgg99"), needles=("vgg99",)),
    Case("attack-graphs-need-cuda", "arguments", plain("train", *SYN, "--mode", "pgd", "--attack-graphs"),
         needles=("--attack-graphs", "CUDA")),
    Case("cuda-without-gpu", "arguments", plain("train", *SYN[:-2], "--device", "cuda"), needles=("cuda",))
    if not torch.cuda.is_available() else Case("cvae-needs-cvae-model", "arguments",
                                                plain("train", *SYN, "--mode", "cvae", "--model", "lenet5"),
                                                needles=("CVAE model",)),
]


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def assert_one_error_line(r, code, needles):
    return assert_error(r, code, *needles)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_cli_input(case, tmp_path, monkeypatch, art):
    monkeypatch.chdir(tmp_path)
    args = case.setup(tmp_path, art)
    before, art_before = files(tmp_path), files(art)
    if case.patch is not None:
        case.patch(monkeypatch)
    r = cli(*args)
    assert_one_error_line(r, case.code, case.needles)
    assert files(tmp_path) - before == set() and files(art) == art_before, files(tmp_path) - before
    assert set(case.kept) <= before | files(tmp_path)


@pytest.mark.parametrize("command", ["reproduce", "tradeoff"])
def test_a_study_that_fails_on_its_inputs_leaves_no_folder(tmp_path, command):
    (tmp_path / "empty").mkdir()
    r = cli(command, "--data", "mnist", "--data-root", tmp_path / "empty", "--quick", "--run-dir", tmp_path / "run")
    assert_error(r, 2, "MNIST file")
    assert not (tmp_path / "run").exists()


def test_the_matrix_covers_every_class():
    kinds = {}
    for c in CASES:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    assert all(n >= 2 for n in kinds.values()) and len(CASES) + len(API_CASES) >= 40, kinds


# ---------------------------------------------------------------- interruptions and divergence


def interrupt_on(monkeypatch, call: int, exc=KeyboardInterrupt):
    """training.train_epoch raises `exc` on its `call`-th call (1-based)."""
    real, calls = training.train_epoch, []

    def fake(*a, **k):
        calls.append(1)
        if len(calls) == call:
            raise exc()
        return real(*a, **k)

    monkeypatch.setattr(training, "train_epoch", fake)


def test_interrupt_in_training_says_what_is_kept(tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    interrupt_on(monkeypatch, 2)
    r = cli("train", *SYN, "--epochs", "3", "--out", out)
    line = assert_one_error_line(r, 130, ())
    assert line == f"error: interrupted in epoch 2/3 of training {out}; epoch 1 is saved in {out}; " \
                   f"rerun with --resume to continue from it"
    assert files(tmp_path) == {"m.safetensors"} and checkpoint.load(out).meta["epoch"] == 1


def test_interrupt_before_anything_is_saved_and_in_attack(tmp_path, monkeypatch, art):
    interrupt_on(monkeypatch, 1)
    r = cli("train", *SYN, "--epochs", "2", "--out", tmp_path / "m.safetensors")
    assert assert_one_error_line(r, 130, ()).endswith("nothing of " + str(tmp_path / "m.safetensors") + " is saved yet")
    import manifoldadv.cli.attack as attack_cli

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(attack_cli, "attack_accuracy", stop)
    r = cli("attack", art / "clf.safetensors", "--attacks", "pgd", "--limit", "8", "--device", "cpu")
    assert assert_one_error_line(r, 130, ("while attacking", "with pgd")).endswith("attack writes nothing")
    assert files(tmp_path) == set()


def test_interrupt_in_a_study_says_rerun_the_command(tmp_path, monkeypatch):
    interrupt_on(monkeypatch, 4)  # cvae epochs 1-3 done, std's first epoch interrupted
    run = tmp_path / "run"
    r = cli("reproduce", "--quick", "--limit", "60", "--no-theory", "--no-autoattack", "--device", "cpu",
            "--run-dir", run)
    line = assert_one_error_line(r, 130, ("interrupted in epoch", "synthetic-cvae.safetensors"))
    assert line.endswith(f"finished models and evaluations are kept in {run}; rerun the same command to continue")


def test_divergence_stops_with_the_last_finite_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    # four batches: after the first step the weights are near 1e30 and the next losses overflow
    r = cli("train", *SYN, "--epochs", "2", "--batch-size", "16", "--lr", "1e30", "--out", out)
    assert_one_error_line(r, 1, ("diverged in epoch 1/2", "nothing was saved", "--lr"))
    assert files(tmp_path) == set()
    real = training.train_epoch
    calls = []

    def nan_second(*a, **k):
        calls.append(1)
        loss, acc = real(*a, **k)
        return (math.nan if len(calls) == 2 else loss), acc

    monkeypatch.setattr(training, "train_epoch", nan_second)
    r = cli("train", *SYN, "--epochs", "3", "--out", out)
    assert_one_error_line(r, 1, ("diverged in epoch 2/3", f"epoch 1 in {out} is the last finite checkpoint"))
    assert checkpoint.load(out).meta["epoch"] == 1 and files(tmp_path) == {"m.safetensors"}


def test_disk_full_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    r = cli("train", *SYN, "--epochs", "1", "--out", tmp_path / "m.safetensors")
    assert_one_error_line(r, 2, (f"cannot write {tmp_path / 'm.safetensors'}", "No space left on device"))
    assert files(tmp_path) == set()


def test_outputs_of_one_command_are_kept_together_or_not_at_all(tmp_path, monkeypatch):
    """spectrum writes its figure, then its CSV: a disk that fills between the two leaves neither."""
    real = outputs.os.fsync
    calls = []

    def full_on_second_file(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(outputs.os, "fsync", full_on_second_file)
    r = cli("spectrum", *SYN, "--classes", "0", "--plot", tmp_path / "s.png", "--csv", tmp_path / "s.csv")
    assert_one_error_line(r, 2, (f"cannot write {tmp_path / 's.csv'}", "No space left on device"))
    assert len(calls) == 2 and files(tmp_path) == set()


# ---------------------------------------------------------------- temporary files and caches


def test_stale_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "m.safetensors"
    dead = 2**22 + 12345  # above the pid range of this machine's kernels: no such process
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    stale = tmp_path / f".m.safetensors.{dead}.abcd1234.tmp"
    live = tmp_path / ".m.safetensors.1.abcd1234.tmp"  # pid 1 is alive: another writer's, kept
    old = tmp_path / ".m.safetensors.k3j4h5g6.tmp"  # the earlier naming, no pid: removed once old
    other = tmp_path / f".n.safetensors.{dead}.abcd1234.tmp"  # another target's: not ours to remove
    for p in (stale, live, old, other):
        p.write_bytes(b"x" * 1000)
    os.utime(old, (1, 1))
    outputs.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert not stale.exists() and not old.exists() and live.exists() and other.exists()


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """One finished quick study that both cache cases damage in turn (each rerun leaves it whole)."""
    run = tmp_path_factory.mktemp("study") / "run"
    args = ["reproduce", "--quick", "--limit", "60", "--no-theory", "--no-autoattack", "--no-audit", "--device", "cpu",
            "--train-steps", "1", "--run-dir", run]
    return run, args, cli_json(*args)


# Each rerun damages both caches, one each way (a rerun costs most of a quick study): between
# them, each cache is seen truncated once and written by another version once.
@pytest.mark.slow
@pytest.mark.parametrize("corrupt,other", [("evals.json", "spectra.json"), ("spectra.json", "evals.json")])
def test_damaged_study_caches_are_named_and_rebuilt(quick_study, corrupt, other):
    """A truncated cache is named, moved aside and rebuilt; a cache without this version's format
    (the shape older versions wrote: keys to rows) is not read: one log line, and the study
    recomputes what it needs."""
    run, args, first = quick_study
    (run / "results" / corrupt).write_text('{"truncated": ')
    path = run / "results" / other
    path.write_text(json.dumps({'["synthetic-std.safetensors", "0" , {"name": "clean"}]': {"accuracy": 0.0}}))
    r = cli(*args, "--json")
    assert r.exit_code == 0, r.output
    assert f"{run / 'results' / corrupt} was not valid JSON" in r.stderr and "rebuilding it" in r.stderr
    assert len(list((run / "results").glob(f"{corrupt}.corrupt-*"))) == 1
    lines = [ln for ln in r.stderr.splitlines() if "written by another version" in ln]
    assert lines == [f"{path} was written by another version of manifoldadv: rebuilding it"]
    again = json.loads(r.stdout)
    assert again["table1"] == first["table1"] and again["spectra"]["summary"] == first["spectra"]["summary"]
    for name in (corrupt, other):
        assert json.loads((run / "results" / name).read_text())["format"] == outputs.CACHE_FORMAT


def test_auto_trained_cvae_records_the_subset_it_saw(tmp_path):
    out = tmp_path / "vae.safetensors"
    cli_json("train", *SYN, "--mode", "vae", "--epochs", "2", "--adv-start", "1", "--out", out)
    cvae = checkpoint.load(tmp_path / "synthetic-cvae.safetensors").meta
    assert cvae["hparams"]["limit"] == 64 and cvae["dataset"] == "synthetic"


# ---------------------------------------------------------------- the Python API


@dataclass
class ApiCase:
    id: str
    call: Callable
    error: type
    match: str
    extra: dict = field(default_factory=dict)


def _xs(dtype=torch.float32, shape=(2, 5)):
    return [torch.zeros(shape, dtype=dtype) for _ in range(3)]


def _leaf():
    x = torch.rand(2, 5, requires_grad=True)
    return [x, x.detach().clone(), torch.randn(2, 5)]


def _nonleaf():
    x = torch.rand(2, 5, requires_grad=True) * 1.0
    return [x, x.detach().clone(), torch.randn(2, 5)]


API_CASES = [
    ApiCase("pgd-step-int", lambda: ops.pgd_step(*_xs(torch.int64), step=1, eps=1, norm="linf"), TypeError, "floating"),
    ApiCase("pgd-step-uint8-grad", lambda: ops.pgd_step(*_xs()[:2], torch.zeros(2, 5, dtype=torch.uint8), step=1,
                                                        eps=1, norm="l2"), TypeError, "uint8"),
    ApiCase("pgd-step-inplace-int", lambda: ops.pgd_step_(*_xs(torch.int32), step=1, eps=1, norm="l1"), TypeError,
            "floating"),
    ApiCase("pgd-step-inplace-leaf", lambda: ops.pgd_step_(*_leaf(), step=0.1, eps=1, norm="linf"), ValueError,
            "requires grad"),
    ApiCase("pgd-step-inplace-nonleaf", lambda: ops.pgd_step_(*_nonleaf(), step=0.1, eps=1, norm="l2"), ValueError,
            "requires grad"),
    ApiCase("pgd-step-shapes", lambda: ops.pgd_step(torch.zeros(2, 5), torch.zeros(2, 4), torch.zeros(2, 5), step=1,
                                                    eps=1, norm="linf"), UsageError, "one shape"),
    ApiCase("pgd-step-norm", lambda: ops.pgd_step(*_xs(), step=1, eps=1, norm="l3"), UsageError, "norm"),
    ApiCase("pgd-step-negative-step", lambda: ops.pgd_step(*_xs(), step=-1, eps=1, norm="linf"), UsageError, "step"),
    ApiCase("cov-float-labels", lambda: ops.ClassCovariance(3, 5).update(torch.rand(4, 5), torch.tensor([0.0, 1.9, 2.0, 1.0])),
            TypeError, "integer"),
    ApiCase("cov-bool-labels", lambda: ops.ClassCovariance(2, 5).update(torch.rand(2, 5), torch.tensor([True, False])),
            TypeError, "integer"),
    ApiCase("cov-label-range", lambda: ops.ClassCovariance(3, 5).update(torch.rand(2, 5), torch.tensor([0, 3])),
            UsageError, r"\[0, 3\)"),
    ApiCase("cov-int-features", lambda: ops.ClassCovariance(3, 5).update(torch.ones(2, 5, dtype=torch.int64),
                                                                          torch.tensor([0, 1])), UsageError, "floating"),
    ApiCase("spec-eps-nan", lambda: make_spec("pgd", "mnist", eps=float("nan")), ValueError, "eps"),
    ApiCase("spec-eps-inf", lambda: make_spec("pgd", "mnist", eps=float("inf")), ValueError, "eps"),
    ApiCase("spec-step-size-negative", lambda: make_spec("pgd", "mnist", step_size=-1), ValueError, "step_size"),
    ApiCase("spec-steps-fraction", lambda: make_spec("pgd", "mnist", steps=2.5), ValueError, "steps"),
    ApiCase("spec-steps-inf", lambda: make_spec("pgd", "mnist", steps=float("inf")), ValueError, "steps"),
    ApiCase("spec-steps-huge", lambda: make_spec("pgd", "mnist", steps=10**21), ValueError, "steps"),
    ApiCase("spec-restarts-zero", lambda: make_spec("l2", "mnist", restarts=0), ValueError, "restarts"),
    ApiCase("spec-name-none", lambda: make_spec(None, "mnist"), ValueError, "attack name"),
    ApiCase("checkpoint-kind-unknown", lambda: checkpoint.load("x.safetensors", kind="banana"), ValueError, "kind"),
    ApiCase("checkpoint-device-file", lambda: checkpoint.load("/dev/zero"), ValueError, "not a regular file"),
    ApiCase("config-lr-zero", lambda: resolve_config("synthetic", "std", lr=0.0), UsageError, "--lr"),
    ApiCase("config-no-adversarial-epoch", lambda: resolve_config("mnist", "pgd", epochs=3), UsageError,
            "no adversarial epoch"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_bad_api_input(case):
    with pytest.raises(case.error, match=case.match):
        case.call()


def test_all_finite_sees_parameters_and_buffers():
    from manifoldadv import models

    m = models.create("resnet20", in_shape=(3, 8, 8), num_classes=10)
    assert training.all_finite(m)
    m.net.bn.running_var[0] = float("nan")  # a buffer
    assert not training.all_finite(m)
    m.net.bn.running_var[0] = 1.0
    with torch.no_grad():
        m.net.fc.weight[0, 0] = float("inf")
    assert not training.all_finite(m)
