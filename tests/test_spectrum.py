import numpy as np
import pytest
import torch

from manifoldadv.data import Split
from manifoldadv.spectrum import SetSpectrum, accumulate, class_spectra, plot, summarize

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
    assert all({"set", "class", "top_ratio", "tail_ratio"} <= set(r) for r in doc["summary"])
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
