"""Your own model and data: factories, weights, .pt2 programs, npz and image folders, against the
toolkit's own checkpoints and arrays; every bad input one line; and the README example as written."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from manifoldadv import checkpoint
from manifoldadv.data import Dataset, Split, load_dataset
from manifoldadv.evaluation.spectrum import compute
from manifoldadv.models import loading

from helpers import assert_usage_error, cli, cli_json

ROOT = Path(__file__).resolve().parents[1]

LENET = '''
from torch import nn

def lenet(in_shape, num_classes):  # the toolkit's lenet5, written out
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

def wide(in_shape, num_classes):
    return lenet(in_shape, num_classes + 1)

def not_a_module():
    return 42
'''


def _module(tmp_path, monkeypatch, name: str, source: str) -> str:
    """Write `source` as module `name` in tmp_path, make it the working directory."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(name, None)
    return name


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A LeNet5 trained on synthetic data by the toolkit, and its network's weights as plain safetensors."""
    d = tmp_path_factory.mktemp("native")
    ck = d / "std.safetensors"
    r = cli("train", "--data", "synthetic", "--mode", "std", "--epochs", "1", "--limit", "300", "--out", ck,
            "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    c = checkpoint.load(ck)
    plain = d / "net.safetensors"
    save_file({k[len("net."):]: v.contiguous() for k, v in c.state_dict().items() if k.startswith("net.")}, plain)
    return ck, plain, c.meta


def _accuracies(*args):
    doc = cli_json("attack", *args, "--attacks", "clean,fgsm,pgd,l2", "--limit", "300", "--steps", "5",
                   "--device", "cpu")
    return [(r["attack"], r["accuracy"]) for r in doc["results"]], doc


def test_a_factory_with_the_same_weights_gives_the_same_accuracies(native, tmp_path, monkeypatch):
    ck, plain, meta = native
    mod = _module(tmp_path, monkeypatch, "own_lenet_a", LENET)
    norm = ",".join(repr(v) for v in (*meta["mean"], *meta["std"]))
    want, _ = _accuracies(ck)
    got_plain, doc = _accuracies(f"{mod}:lenet", "--weights", plain, "--normalize", norm, "--data", "synthetic")
    got_ck, _ = _accuracies(f"{mod}:lenet", "--weights", ck, "--data", "synthetic")  # our checkpoint as weights
    assert got_plain == want and got_ck == want
    assert 0.3 < dict(want)["clean"] and dict(want)["pgd"] < dict(want)["clean"]
    origin = doc["results"][0]["origin"]
    assert origin["factory"] == f"{mod}:lenet" and origin["weights_sha256"] == checkpoint.digest(plain)
    assert origin["normalize"]["mean"] == pytest.approx(meta["mean"]) and doc["data"]["digest"]
    # without the normalisation the same weights see other inputs: other numbers
    off, _ = _accuracies(f"{mod}:lenet", "--weights", plain, "--data", "synthetic")
    assert off != want


def test_a_factory_trains_and_its_checkpoint_loads_only_through_the_factory(tmp_path, monkeypatch):
    mod = _module(tmp_path, monkeypatch, "own_lenet_b", LENET)
    out = tmp_path / "f.safetensors"
    r = cli("train", "--data", "synthetic", "--mode", "pgd", "--model", f"{mod}:lenet", "--epochs", "2",
            "--adv-start", "1", "--steps", "2", "--limit", "200", "--out", out, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    meta = checkpoint.load(out).meta
    assert meta["model"] == f"{mod}:lenet" and meta["data"]["name"] == "synthetic"
    assert_usage_error(cli("attack", out, "--limit", "50"), f"{mod}:lenet --weights {out}")
    doc = cli_json("attack", f"{mod}:lenet", "--weights", out, "--data", "synthetic", "--attacks", "clean",
                   "--limit", "200")
    assert doc["results"][0]["accuracy"] == pytest.approx(meta["clean_accuracy"], abs=1e-9)


def test_a_program_round_trips_with_equal_logits(native, tmp_path):
    ck, _, _ = native
    model, _ = checkpoint.load_model(ck, kind="classifier")
    model.eval()
    x = torch.rand(5, 1, 28, 28)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "lenet.pt2"
    torch.export.save(ep, str(path))
    ds = load_dataset("synthetic", limit=50)
    loaded, rec = loading.load(loading.parse([str(path)])[0], ds)
    xs = ds.test.images(slice(0, 50))
    with torch.no_grad():
        assert torch.equal(loaded(xs), model(xs))
    assert rec["origin"] == {**rec["origin"], "source": "program", "sha256": checkpoint.digest(path)}
    doc = cli_json("attack", path, "--data", "synthetic", "--attacks", "clean", "--limit", "50")
    want = cli_json("attack", ck, "--attacks", "clean", "--limit", "50")
    assert doc["results"][0]["accuracy"] == want["results"][0]["accuracy"]


class Boxed:
    """An object a pickle can hold and only a full unpickler rebuilds (as a tensor subclass would)."""

    rebuilt = False

    def __init__(self, t):
        self.t = t

    def __setstate__(self, state):
        Boxed.rebuilt = True
        self.__dict__.update(state)


def test_a_program_that_needs_unpickling_is_refused(native, tmp_path, monkeypatch):
    from torch.export.pt2_archive import _package

    ck, _, _ = native
    model, _ = checkpoint.load_model(ck, kind="classifier")
    ep = torch.export.export(model.eval(), (torch.rand(2, 1, 28, 28),))
    path = tmp_path / "pickled.pt2"
    real_save = torch.save
    with monkeypatch.context() as m:  # weights pickled as objects only a full unpickler rebuilds
        m.setattr(_package, "_should_use_pickle", lambda t: True)
        m.setattr(torch, "save", lambda obj, f, **kw: real_save(Boxed(obj), f, **kw))
        torch.export.save(ep, str(path))
    assert_usage_error(cli("attack", path, "--data", "synthetic", "--limit", "20"), "unpickling", "--weights")
    assert not Boxed.rebuilt
    with pytest.raises(Exception):  # torch's own loader would have rebuilt it (the check above can fail)
        torch.export.load(str(path))
    assert Boxed.rebuilt
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip")
    assert_usage_error(cli("attack", garbage, "--data", "synthetic"), "not a loadable torch.export program")


@pytest.mark.parametrize("route", ["pickle.loads", "_pickle_load_obj", "torch.load"])
def test_every_unpickling_route_of_the_program_loader_is_shut(tmp_path, monkeypatch, route):
    """torch.export.load reaches constants and weights through these three; each must refuse."""
    import io
    import pickle

    from torch import export as torch_export

    from manifoldadv.errors import CheckpointError

    payload = pickle.dumps(Boxed(1))

    def archive_with_pickled_parts(path):  # stands in for torch's reader meeting such an archive
        if route == "pickle.loads":
            return pickle.loads(payload)
        if route == "_pickle_load_obj":
            return torch._C._pickle_load_obj(payload)
        return torch.load(io.BytesIO(payload), weights_only=False)

    Boxed.rebuilt = False
    monkeypatch.setattr(torch_export, "load", archive_with_pickled_parts)
    (tmp_path / "p.pt2").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="only be loaded by unpickling"):
        loading.load_program(tmp_path / "p.pt2")
    assert not Boxed.rebuilt


# --------------------------------------------------------------------------- data


def _arrays(seed=0, n_train=240, n_test=180, shape=(12, 12), channels=1, classes=3):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % classes
        x = rng.integers(0, 256, size=(n, channels, *shape), dtype=np.uint8)
        x[:, :, : shape[0] // 2] //= (y[:, None, None, None] + 1).astype(np.uint8)  # classes differ
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _spectra(doc_or_sets):
    return {(s["name"], s["class"]): np.array(s["eigenvalues"]) for s in doc_or_sets["sets"]}


def _write_folder(root: Path, a: dict, names=("cat", "dog", "eel")):
    from PIL import Image

    for split in ("train", "test"):
        for i, (img, lab) in enumerate(zip(a[f"x_{split}"], a[f"y_{split}"])):
            d = root / split / names[lab]
            d.mkdir(parents=True, exist_ok=True)
            pic = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            Image.fromarray(pic).save(d / f"{i:04d}.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_and_folder_give_the_spectra_of_the_same_arrays(tmp_path, channels):
    a = _arrays(channels=channels)
    ref = Dataset("ref", Split(torch.from_numpy(a["x_train"]), torch.from_numpy(a["y_train"])),
                  Split(torch.from_numpy(a["x_test"]), torch.from_numpy(a["y_test"])), 3,
                  (channels, 12, 12), (0.5,) * channels, (0.25,) * channels)
    want = {c: ev for c, ev in compute([], ref, [0, 1, 2], "cpu")[0].eigenvalues.items()}
    # the brute-force float64 covariance, independently, of the float32 images every path reads
    x = (a["x_test"].reshape(len(a["x_test"]), -1).astype(np.float32) / 255).astype(np.float64)
    for c in range(3):
        xc = x[a["y_test"] == c]
        brute = np.sort(np.linalg.eigvalsh(np.cov(xc, rowvar=False, bias=False)))[::-1]
        assert np.max(np.abs(want[c] - brute)) < 1e-10
    nhwc = {k: (v.transpose(0, 2, 3, 1) if k.startswith("x") else v) for k, v in a.items()}
    np.savez(tmp_path / "nhwc.npz", **nhwc)
    floats = {k: (v.astype(np.float64) / 255 if k.startswith("x") else v) for k, v in a.items()}
    np.savez(tmp_path / "float.npz", **floats)
    _write_folder(tmp_path / "pngs", a)
    for data in (f"npz:{tmp_path / 'nhwc.npz'}", f"npz:{tmp_path / 'float.npz'}", f"folder:{tmp_path / 'pngs'}"):
        loaded = load_dataset(data)  # the same pixels in the same places (spectra cannot tell a permutation)
        order = np.argsort(a["y_test"], kind="stable") if data.startswith("folder") else np.arange(len(a["y_test"]))
        assert torch.equal(loaded.test.images(), ref.test.images()[order]) and torch.equal(loaded.test.y, ref.test.y[order])
        doc = cli_json("spectrum", "--data", data, "--device", "cpu")
        got = _spectra(doc)
        assert doc["data"]["num_classes"] == 3 and doc["data"]["shape"] == [channels, 12, 12]
        for c in range(3):
            assert np.max(np.abs(got[("clean", c)] - want[c])) < 1e-10, data
    assert doc["data"]["classes"] == ["cat", "dog", "eel"]


def test_a_folder_is_read_once_and_resized_on_request(tmp_path, monkeypatch):
    from manifoldadv.data import external

    a = _arrays()
    _write_folder(tmp_path / "pngs", a)
    first = load_dataset(f"folder:{tmp_path / 'pngs'}")
    calls = []
    monkeypatch.setattr(external, "_read_images", lambda *args: calls.append(1))
    external._load_npz_cached.cache_clear()
    again = load_dataset(f"folder:{tmp_path / 'pngs'}")
    assert not calls and torch.equal(again.test.x, first.test.x)
    monkeypatch.undo()
    small = load_dataset(f"folder:{tmp_path / 'pngs'}", resize=(6, 8))
    assert small.shape == (1, 6, 8) and small.name.endswith("@6x8")


def test_train_on_npz_then_attack_audit_and_spectrum_record_the_data(tmp_path, monkeypatch):
    a = _arrays(n_train=300, n_test=60)
    np.savez(tmp_path / "d.npz", **a)
    monkeypatch.chdir(tmp_path)
    r = cli("train", "--data", "npz:d.npz", "--mode", "pgd", "--epochs", "2", "--adv-start", "1", "--steps", "2",
            "--device", "cpu", "-q")
    assert_usage_error(r, "no default budget", "--eps")
    # the MLP: the audit's Square attack makes 5000 forward passes (with the default ResNet, 25 s)
    r = cli("train", "--data", "npz:d.npz", "--mode", "pgd", "--eps", "0.05", "--epochs", "2", "--adv-start", "1",
            "--steps", "2", "--model", "mlp", "--device", "cpu", "-q", "--out", "pgd.safetensors")
    assert r.exit_code == 0, r.output
    meta = checkpoint.load(tmp_path / "pgd.safetensors").meta
    assert meta["dataset"] == f"npz:{tmp_path / 'd.npz'}" and meta["data"]["train"] == 300
    doc = cli_json("attack", "pgd.safetensors", "--attacks", "clean,pgd", "--eps", "0.05")
    assert doc["data"]["digest"] == meta["data"]["digest"] and doc["dataset"] == meta["dataset"]
    r = cli("attack", "pgd.safetensors", "--attacks", "l2")
    assert_usage_error(r, "no default budget for l2", "--l2-eps")
    audit = cli("audit", "pgd.safetensors", "--eps", "0.05", "--examples", "30", "--json")
    assert audit.exit_code in (0, 1) and json.loads(audit.stdout)["models"][0]["origin"]["source"] == "checkpoint"


@pytest.mark.parametrize("channels", [1, 3])
def test_a_generator_and_vae_adversarial_training_on_npz(tmp_path, monkeypatch, channels):
    a = _arrays(n_train=300, n_test=60, channels=channels, shape=(16, 16))
    np.savez(tmp_path / "d.npz", **a)
    monkeypatch.chdir(tmp_path)
    want = "cvae-cnn" if channels == 3 else "cvae-mlp"  # colour with sides of 16k: the CNN; else the MLP
    r = cli("train", "--data", "npz:d.npz", "--mode", "cvae", "--epochs", "1", "-q", "--out", "g.safetensors")
    assert r.exit_code == 0, r.output
    assert checkpoint.load(tmp_path / "g.safetensors").meta["model"] == want
    vae = ["train", "--data", "npz:d.npz", "--mode", "vae", "--cvae", "g.safetensors", "--epochs", "2",
           "--adv-start", "1", "-q", "--out", "v.safetensors"]
    assert_usage_error(cli(*vae), "no default budget for vae", "--latent-eps")
    r = cli(*vae, "--latent-eps", "0.5")
    assert r.exit_code == 0, r.output
    doc = cli_json("attack", "v.safetensors", "--cvae", "g.safetensors", "--attacks", "clean,vae", "--latent-eps", "0.5")
    assert [row["attack"] for row in doc["results"]] == ["clean", "vae"]
    row = doc["results"][1]
    assert row["eps"] == 0.5 and row["space"] == "latent" and row["cvae"] == "g.safetensors"


# --------------------------------------------------------------------------- bad input


def _bad_npz(tmp_path, name, **change):
    a = _arrays(n_train=30, n_test=12)
    for k, v in change.items():
        if v is None:
            a.pop(k)
        else:
            a[k] = v
    np.savez(tmp_path / f"{name}.npz", **a)
    return f"npz:{tmp_path / name}.npz"


NAN = np.full((12, 1, 12, 12), np.nan)


@pytest.mark.parametrize("change,needles", [
    ({"y_test": None}, ["missing array y_test"]),
    ({"y_test": np.arange(12) % 4}, ["label 3 out of range 0..2"]),
    ({"x_test": np.full((12, 1, 12, 12), 1.5)}, ["[0, 1]", "1.5"]),
    ({"x_test": NAN}, ["NaN"]),
])
def test_bad_npz_is_one_line_and_writes_nothing(tmp_path, change, needles):
    data = _bad_npz(tmp_path, "bad", **change)
    out = tmp_path / "out.safetensors"
    assert_usage_error(cli("train", "--data", data, "--out", out, "--epochs", "1"), *needles)
    assert not out.exists()


@pytest.mark.parametrize("case", ["empty", "mixed", "extra"])
def test_bad_folder_is_one_line_and_writes_nothing(tmp_path, case):
    from PIL import Image

    root = tmp_path / "imgs"
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a")):
        (root / split / cls).mkdir(parents=True)
    if case != "empty":
        for split, cls, size in (("train", "a", 8), ("train", "b", 8 if case == "extra" else 9), ("test", "a", 8)):
            Image.fromarray(np.zeros((size, size), np.uint8)).save(root / split / cls / "0.png")
    if case == "extra":
        (root / "test" / "c").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "test" / "c" / "0.png")
    needles = {"empty": ["no images"], "mixed": ["differ in size", "--resize"],
               "extra": ["test/c/", "training split lacks"]}[case]
    out = tmp_path / "out.safetensors"
    assert_usage_error(cli("train", "--data", f"folder:{root}", "--out", out, "--epochs", "1"), *needles)
    assert not out.exists() and not (tmp_path / "cache").exists() or case == "extra"


@pytest.mark.parametrize("target,extra,needles", [
    ("no_such_module:lenet", [], ["cannot import module no_such_module"]),
    ("{mod}:not_a_module", [], ["returned int, not a torch.nn.Module"]),
    ("{mod}:wide", [], ["(2, 11)", "10 classes"]),
    ("{mod}:lenet", ["--weights", "{missing}"], ["missing keys 0.weight", "11.bias"]),
    ("{mod}:lenet", ["--weights", "{unexpected}"], ["unexpected key extra.weight"]),
    ("{mod}:lenet", ["--weights", "{shape}"], ["size mismatch"]),
])
def test_bad_factory_is_one_line(native, tmp_path, monkeypatch, target, extra, needles):
    _, plain, _ = native
    mod = _module(tmp_path, monkeypatch, "own_lenet_c", LENET)
    state = {k: v for k, v in __import__("safetensors.torch").torch.load_file(plain).items()}
    save_file({k: v for k, v in state.items() if k not in ("0.weight", "11.bias")}, tmp_path / "missing.st")
    save_file({**state, "extra.weight": torch.zeros(1)}, tmp_path / "unexpected.st")
    save_file({**state, "11.bias": torch.zeros(3)}, tmp_path / "shape.st")
    fill = {"mod": mod, "missing": tmp_path / "missing.st", "unexpected": tmp_path / "unexpected.st",
            "shape": tmp_path / "shape.st"}
    args = [str(a).format(**fill) for a in [target, *extra]]
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli("attack", *args, "--data", "synthetic", "--attacks", "clean", "--limit", "20", "--json")
    assert_usage_error(r, *needles)
    assert r.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_weights_and_normalize_go_with_a_factory(native, tmp_path):
    ck, plain, _ = native
    assert_usage_error(cli("attack", ck, "--weights", plain), "--weights goes with a factory")
    assert_usage_error(cli("attack", ck, "--normalize", "0.5,0.5"), "--normalize wraps a factory")
    assert_usage_error(cli("attack", "some_mod:fn"), "carries no data set", "--data")
    assert_usage_error(cli("attack", ck, "--data", "mnist"), "does not match")
    assert_usage_error(cli("reproduce", "--data", f"npz:{tmp_path}/x.npz"), "the study", "use train, attack")


def test_nothing_is_ever_unpickled():
    """torch.load only with weights_only=True; numpy without pickles; pickle only in the CIFAR reader's
    restricted unpickler."""
    for path in (ROOT / "manifoldadv").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name.endswith("torch.load") or name == "real_load":
                assert kw.get("weights_only") == "True", f"{path}: {ast.unparse(node)}"
            if name in ("np.load", "numpy.load"):
                assert kw.get("allow_pickle") == "False", f"{path}: {ast.unparse(node)}"
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
                raise AssertionError(f"{path}: {ast.unparse(node)}")
    unpicklers = [p for p in (ROOT / "manifoldadv").rglob("*.py") if "pickle.Unpickler)" in p.read_text()]
    assert [p.name for p in unpicklers] == ["datasets.py"]


def test_the_readme_example_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own model and data", 1)[1].split("\n## ", 1)[0]
    script = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", PYTHONPATH="")
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert "error:" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert re.search(r"autoattack .*\d+\.\d\d%", r.stdout), r.stdout[-3000:]
    assert "(c) doubling the steps" in r.stdout and (tmp_path / "spectra.png").stat().st_size > 1000
