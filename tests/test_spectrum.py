import numpy as np
import pytest
import torch

from manifoldadv.data import Split
from manifoldadv.evaluation.spectrum import (PerturbationEnergy, SetSpectrum, accumulate, class_spectra, plot, summarize,
                                  top_directions)

from helpers import assert_usage_error, cli, cli_json


def test_eigenvalues_match_numpy_float64_on_uneven_stream():
    rng = np.random.default_rng(0)
    n, d = 900, 24
    y = rng.integers(0, 3, size=n)
    # correlated data with a large offset and a spread of scales
    x = 5.0 + rng.standard_normal((n, d)) @ np.diag(np.logspace(0, -3, d)) @ rng.standard_normal((d, d))
    split = Split(torch.from_numpy(x.astype(np.float32)).view(n, 1, 4, 6), torch.from_numpy(y))
    sizes = [1, 7, 250, 3, 64, 575]  # uneven batches through the streaming state
    from manifoldadv import ops

    acc = ops.ClassCovariance(3, d)
    start = 0
    for b in sizes:
        acc.update(split.images(slice(start, start + b)).flatten(1), split.y[start:start + b])
        start += b
    counts, _, covs = acc.finalize()
    got = class_spectra(counts, covs, [0, 1, 2])
    xf = x.astype(np.float32).astype(np.float64)
    for c in range(3):
        ref = np.linalg.eigvalsh(np.cov(xf[y == c].T))[::-1]
        assert np.allclose(got[c], ref, rtol=0, atol=1e-8 * ref[0])
    # the batched helper over the whole split gives the same spectra
    counts2, _, covs2 = accumulate(split, [0, 2], device="cpu", batch_size=97)
    for c in (0, 2):
        assert np.allclose(class_spectra(counts2, covs2, [c])[c], got[c], rtol=0, atol=1e-10 * got[c][0])


def test_summary_ratios_floor_and_geometric_mean():
    clean = SetSpectrum("clean", None, "none", np.array([5]), {0: np.array([4.0, 1.0, 0.0, 0.0])})
    robust = SetSpectrum("r", "x", "pgd", np.array([5]), {0: np.array([2.0, 2.0, 4e-3, 1e-9])})
    (row,) = summarize(clean, robust, floor_rel=1e-3, top=2)
    # floor = 1e-3 * 4 = 4e-3: top ratios 0.5 and 2 -> geometric mean 1; tail: 4e-3/4e-3 = 1 and 4e-3/4e-3 = 1
    assert row["top_ratio"] == pytest.approx(1.0) and row["tail_ratio"] == pytest.approx(1.0)
    robust.eigenvalues[0] = np.array([4.0, 1.0, 0.4, 4e-2])
    (row,) = summarize(clean, robust, floor_rel=1e-3, top=2)
    assert row["top_ratio"] == pytest.approx(1.0)
    assert row["tail_ratio"] == pytest.approx(np.sqrt(100.0 * 10.0))
    assert row["floor"] == pytest.approx(4e-3)


def test_perturbation_energy_in_the_top_directions_matches_numpy():
    rng = np.random.default_rng(2)
    n, d, k = 600, 40, 5
    y = rng.integers(0, 3, size=n)
    shape = np.diag(np.logspace(1, -2, d)) @ np.linalg.qr(rng.standard_normal((d, d)))[0]
    x = rng.standard_normal((n, d)) @ shape
    covs = torch.from_numpy(np.stack([np.cov(x[y == c].T) for c in range(3)]))
    dirs = top_directions(covs, [0, 2], k)
    delta = 0.1 * rng.standard_normal((n, d)) @ shape + rng.standard_normal((n, d))  # partly along the data
    acc = PerturbationEnergy(dirs)
    start = 0
    for b in (1, 250, 3, 346):  # uneven batches
        acc.update(torch.from_numpy(delta[start:start + b]).float(), torch.from_numpy(y[start:start + b]))
        start += b
    got = acc.fractions()
    assert set(got) == {0, 2}
    d32 = delta.astype(np.float32).astype(np.float64)
    for c in (0, 2):
        w, v = np.linalg.eigh(np.cov(x[y == c].T))
        top = v[:, np.argsort(w)[::-1][:k]]
        dc = d32[y == c]
        want = np.square(dc @ top).sum() / np.square(dc).sum()
        assert got[c] == pytest.approx(want, rel=1e-10)
        assert abs(want - k / d) > 0.02


def test_plot_is_png_with_three_panels_per_class(tmp_path):
    rng = np.random.default_rng(1)
    ev = {c: np.sort(rng.random(50))[::-1] for c in (0, 3)}
    sets = [SetSpectrum("clean", None, "none", np.ones(4), ev),
            SetSpectrum("pgd-adv / pgd", "a", "pgd", np.ones(4), {c: v * 2 for c, v in ev.items()})]
    p = tmp_path / "fig.png"
    titles = plot(p, sets, [0, 3], top=30)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(str(p))
    assert img.shape[0] > 400 and img.shape[1] > 1000  # two rows of three panels
    assert titles == ["class 0: all 50 eigenvalues", "class 0: largest 30", "class 0: smallest 20",
                      "class 3: all 50 eigenvalues", "class 3: largest 30", "class 3: smallest 20"]


def test_spectrum_cli_json_plot_and_csv(tmp_path):
    ck = tmp_path / "std.safetensors"
    cli_json("train", "--data", "synthetic", "--limit", "200", "--epochs", "1", "--out", ck)
    doc = cli_json("spectrum", ck, "--classes", "0,1", "--limit", "400", "--plot", tmp_path / "s.png",
                   "--csv", tmp_path / "s.csv")
    assert doc["dataset"] == "synthetic" and doc["classes"] == [0, 1] and doc["top"] == 6
    names = {(s["name"], s["class"]) for s in doc["sets"]}
    assert names == {("clean", 0), ("clean", 1), ("std-adv / pgd", 0), ("std-adv / pgd", 1)}
    assert all(len(s["eigenvalues"]) == 784 for s in doc["sets"])
    assert {r["set"] for r in doc["summary"]} == {"std-adv / pgd"}
    assert all({"set", "reference", "class", "top_ratio", "tail_ratio", "top_energy"} <= set(r) for r in doc["summary"])
    assert all(0 < r["top_energy"] < 1 for r in doc["summary"])
    # the clean synthetic tail is float32 noise; the PGD set fills it
    clean0 = next(s for s in doc["sets"] if s["name"] == "clean" and s["class"] == 0)["eigenvalues"]
    assert clean0[6] < 1e-9 * clean0[0]
    robust0 = next(s for s in doc["sets"] if s["name"] != "clean" and s["class"] == 0)["eigenvalues"]
    assert robust0[6] > 1e6 * clean0[6]  # (with 40 rows per class the rank is 39, so look at index 6)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "set,checkpoint,attack,class,index,eigenvalue" and len(lines) == 1 + 4 * 784
    # no checkpoint: the clean spectra only
    doc = cli_json("spectrum", "--data", "synthetic", "--classes", "2", "--limit", "300")
    assert [s["name"] for s in doc["sets"]] == ["clean"] and doc["summary"] == []


def test_spectrum_bad_arguments(tmp_path):
    assert_usage_error(cli("spectrum", "--classes", "0,42"), "--classes")
    assert_usage_error(cli("spectrum", "--classes", "a,b"), "--classes")
    assert_usage_error(cli("spectrum", tmp_path / "missing.safetensors"), "not found")


def test_spectrum_recon_measures_the_latent_set_against_the_cvae_reconstructions(tmp_path):
    from manifoldadv import checkpoint
    from manifoldadv.cli.common import dataset

    cv, clf = tmp_path / "c.safetensors", tmp_path / "v.safetensors"
    cli_json("train", "--data", "synthetic", "--mode", "cvae", "--limit", "64", "--epochs", "1", "--out", cv)
    cli_json("train", "--data", "synthetic", "--mode", "vae", "--cvae", cv, "--limit", "64", "--epochs", "2",
             "--adv-start", "1", "--out", clf)
    doc = cli_json("spectrum", clf, "--classes", "0,1", "--limit", "400", "--recon", "--floor", "1e-4")
    recon, latent = "reconstruction / c", "vae-adv / vae"
    by = {(s["name"], s["class"]): s for s in doc["sets"]}
    assert {name for name, _ in by} == {"clean", recon, latent}
    assert by[(latent, 0)]["baseline"] == recon and by[(recon, 0)]["attack"] == "reconstruction"
    assert by[(recon, 0)]["checkpoint"] == str(cv) and by[("clean", 0)]["baseline"] is None

    # the reconstruction set, computed here with the CVAE's own encoder and decoder, in float64
    ds = dataset("synthetic", None, 400, False)
    cvae, _ = checkpoint.load_model(cv, kind="cvae")
    for c in (0, 1):
        keep = ds.test.y == c
        x, y = ds.test.images(keep), ds.test.y[keep]
        with torch.no_grad():
            g = cvae.decode_mean(cvae.encode_mean(x, y), y).flatten(1).double().numpy()
        ref = np.linalg.eigvalsh(np.cov(g.T))[::-1]
        assert by[(recon, c)]["n"] == len(y)
        assert np.allclose(by[(recon, c)]["eigenvalues"], ref, rtol=0, atol=1e-8 * ref[0])

    # both sets against the clean one, and the latent set against its reconstructions, recomputed
    pairs = [(r["set"], r["reference"]) for r in doc["summary"]]
    assert sorted(set(pairs)) == sorted({(recon, "clean"), (latent, "clean"), (latent, recon)})
    assert len(pairs) == 6
    for r in doc["summary"]:
        ev_s = np.array(by[(r["set"], r["class"])]["eigenvalues"])
        ev_r = np.array(by[(r["reference"], r["class"])]["eigenvalues"])
        floor = 1e-4 * ev_r[0]
        logs = np.log(np.maximum(ev_s, floor)) - np.log(np.maximum(ev_r, floor))
        assert r["top_ratio"] == pytest.approx(np.exp(logs[:6].mean()), rel=1e-12)
        assert r["tail_ratio"] == pytest.approx(np.exp(logs[6:].mean()), rel=1e-12)

    # the latent set's perturbation G(z') - G(I(x)) in the clean top-6 directions: latent FGSM redone here
    from manifoldadv.attacks import make_spec

    model, _ = checkpoint.load_model(clf, kind="classifier")
    model.eval()
    eps = make_spec("vae", "synthetic").eps
    clean_x = {c: ds.test.images(ds.test.y == c).flatten(1).double().numpy() for c in (0, 1)}
    for c in (0, 1):
        keep = ds.test.y == c
        x, y = ds.test.images(keep), ds.test.y[keep]
        z0 = cvae.encode_mean(x, y).detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(cvae.decode_mean(z0, y)), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, z0)
        with torch.no_grad():
            delta = (cvae.decode_mean(z0 + eps * g.sign(), y) - cvae.decode_mean(z0, y)).flatten(1).double().numpy()
        w, v = np.linalg.eigh(np.cov(clean_x[c].T))
        top = v[:, np.argsort(w)[::-1][:6]]
        want = np.square(delta @ top).sum() / np.square(delta).sum()
        row = next(r for r in doc["summary"] if (r["set"], r["reference"], r["class"]) == (latent, "clean", c))
        assert row["top_energy"] == pytest.approx(want, rel=1e-4)
    assert all("top_energy" not in r for r in doc["summary"] if r["reference"] != "clean")
    assert doc["top_energy_isotropic"] == pytest.approx(6 / 784)

    # no latent set: --recon adds nothing
    doc = cli_json("spectrum", clf, "--attack", "fgsm", "--classes", "0", "--limit", "200", "--recon")
    assert {s["name"] for s in doc["sets"]} == {"clean", "vae-adv / fgsm"}
    assert {r["reference"] for r in doc["summary"]} == {"clean"}
