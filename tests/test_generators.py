"""Generators that keep the manifold: the closed-form PPCA generator against numpy in float64,
free bits, active units and the reconstruction-fidelity measures against closed forms."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from manifoldadv import checkpoint, models
from manifoldadv.cli import app
from manifoldadv.data import Split
from manifoldadv.evaluation import generator
from manifoldadv.training.objectives import active_units

SHAPE = (1, 4, 4)  # d = 16: covariances Monte Carlo can pin down


def gaussian_split(n_per_class=3000, classes=3, seed=0):
    """Classes with distinct means and anisotropic covariances (eigenvalues 1 ... 1e-3)."""
    rng = np.random.default_rng(seed)
    d = math.prod(SHAPE)
    xs, ys, truth = [], [], []
    for c in range(classes):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        lam = np.logspace(0, -3, d) * 0.01
        cov = (q * lam) @ q.T
        mu = rng.uniform(0.3, 0.7, size=d)
        xs.append(rng.multivariate_normal(mu, cov, size=n_per_class))
        ys.append(np.full(n_per_class, c))
        truth.append(cov)
    x = np.concatenate(xs).astype(np.float32).reshape(-1, *SHAPE)
    y = np.concatenate(ys)
    order = rng.permutation(len(y))
    return Split(torch.from_numpy(x[order]), torch.from_numpy(y[order].astype(np.int64))), truth


def fitted(q=5, classes=3):
    split, _ = gaussian_split(classes=classes)
    model = models.create("ppca", in_shape=SHAPE, num_classes=classes, latent=q)
    model.fit(split)
    return model.eval(), split


def numpy_ppca(x, q):
    """(mean, eigenvalues desc, eigenvectors desc, s^2) of one class in float64."""
    x = x.reshape(len(x), -1).astype(np.float64)
    mu = x.mean(0)
    w, u = np.linalg.eigh(np.cov(x, rowvar=False))
    w, u = w[::-1], u[:, ::-1]
    return mu, w, u, w[q:].mean()


def test_ppca_reconstruction_is_the_closed_form_posterior_mean_projection():
    q = 5
    model, split = fitted(q)
    x, y = split.images(slice(0, 600)), split.y[:600]
    with torch.no_grad():
        got = model.decode_mean(model.encode_mean(x, y), y).double().numpy().reshape(600, -1)
    for c in range(3):
        mu, w, u, s2 = numpy_ppca(split.x[split.y == c].numpy(), q)
        rows = (y == c).numpy()
        xc = x[rows].double().numpy().reshape(rows.sum(), -1) - mu
        want = mu + (xc @ u[:, :q]) * (1 - s2 / w[:q]) @ u[:, :q].T
        assert np.abs(got[rows] - want).max() < 1e-5 * max(1.0, np.abs(want).max())
        # the encoder is the exact posterior: mean diag(sqrt(l - s2)/l) U^T (x - mu), variance s2/l
        mean, logvar = model.encode(x[rows], y[rows])
        z = (xc @ u[:, :q]) * np.sqrt(w[:q] - s2) / w[:q]
        assert np.allclose(np.abs(mean.double().numpy()), np.abs(z), atol=1e-4)  # columns up to sign
        assert np.allclose(logvar.double().numpy(), np.log(s2 / w[:q])[None], atol=1e-4)


def test_ppca_samples_have_the_class_covariance():
    """The model covariance W W^T + s^2 I (from the fitted buffers) equals the class covariance
    (numpy, float64) in its top q directions and keeps its trace; and Monte Carlo: x = G_y(z) +
    s e from z, e ~ N(0, I) has that covariance: 200000 samples pin each entry of the sample
    covariance to within 2% of the largest eigenvalue (its standard error is about sqrt(2 / n),
    0.3%, of the entries' scale)."""
    q, n = 5, 200_000
    model, split = fitted(q)
    g = torch.Generator().manual_seed(1)
    for c in range(3):
        w_mat = (model.basis[c] * model.scale[c]).double().numpy()
        model_cov = w_mat @ w_mat.T + float(model.noise[c]) * np.eye(w_mat.shape[0])
        _, w, u, _ = numpy_ppca(split.x[split.y == c].numpy(), q)
        class_cov = np.cov(split.x[split.y == c].numpy().reshape(-1, len(w)).astype(np.float64), rowvar=False)
        top = u[:, :q]
        assert np.allclose(top.T @ model_cov @ top, top.T @ class_cov @ top, atol=1e-6 * w[0])
        assert np.isclose(np.trace(model_cov), np.trace(class_cov), rtol=1e-6)
        y = torch.full((n,), c)
        with torch.no_grad():
            x = model.decode_mean(torch.randn(n, q, generator=g), y).reshape(n, -1)
        x = x.double() + model.noise[c].double().sqrt() * torch.randn(n, x.shape[1], generator=g, dtype=torch.float64)
        assert np.abs(np.cov(x.numpy(), rowvar=False) - model_cov).max() < 0.02 * w[0]


def test_ppca_keeps_each_direction_by_the_closed_form_factor():
    """On the data it was fitted to, the reconstructions keep (1 - s^2/l_i)^2 of each top
    eigenvalue, so kept_top_k = sum (1 - s^2/l_i)^2 l_i / sum l_i."""
    q = 6
    model, split = fitted(q)
    res = generator.fidelity(model, split, [0, 1, 2], "cpu", tops=(3, 6))
    for c in range(3):
        _, w, _, s2 = numpy_ppca(split.x[split.y == c].numpy(), q)
        for k in (3, 6):
            want = ((1 - s2 / w[:k]) ** 2 * w[:k]).sum() / w[:k].sum()
            assert abs(res[f"kept_top{k}_per_class"][c] - want) < 1e-6
            # and the spectrum ratio: the reconstructions' own top eigenvalues are (1 - s^2/l)^2 l
            ratio = np.exp(np.mean(np.log((1 - s2 / w[:k]) ** 2)))
            assert abs(res[f"spectrum_top{k}_per_class"][c] - ratio) < 1e-5


def test_free_bits_floor_each_latent_kl_in_the_objective_only():
    torch.manual_seed(0)
    cvae = models.create("cvae-mlp", in_shape=SHAPE, num_classes=3, latent=6, likelihood="gaussian", sigma=0.1,
                         free_bits=1.0)
    x, y = torch.rand(8, *SHAPE), torch.randint(0, 3, (8,))
    noise = torch.randn(8, 6)
    with torch.no_grad():
        mu, logvar = cvae.encode(x, y)
    kl = 0.5 * (mu.double() ** 2 + logvar.double().exp() - 1 - logvar.double())
    floor = float(kl.median())  # both sides of the floor occur
    cvae.free_bits = floor
    true, _ = cvae.negative_elbo(x, y, noise=noise)
    floored, _ = cvae.negative_elbo(x, y, noise=noise, objective=True)
    want = true.double() + (kl.clamp_min(floor) - kl).sum(1)
    assert torch.allclose(floored.double(), want, rtol=1e-6)
    # below the floor the KL exerts no pull: the objective's gradient in mu is the reconstruction's alone
    mu_p = mu.detach().clone().requires_grad_(True)
    logvar_p = logvar.detach()
    z = mu_p + torch.exp(0.5 * logvar_p) * noise
    rec = (torch.sigmoid(cvae.decode_logits(z, y)) - x).pow(2).flatten(1).sum(1) / (2 * 0.01)
    klp = (0.5 * (mu_p ** 2 + logvar_p.exp() - 1 - logvar_p)).clamp_min(floor).sum(1)
    (g_all,) = torch.autograd.grad((rec + klp).sum(), mu_p, retain_graph=True)
    (g_rec,) = torch.autograd.grad(rec.sum(), mu_p)
    below = kl < floor
    assert torch.equal(g_all[below], g_rec[below]) and not torch.equal(g_all[~below], g_rec[~below])


def test_active_units_against_numpy():
    rng = np.random.default_rng(0)
    # variances 1, 0.04, 0.0025, 0 around means far from 0 (a unit is active by its spread, not its size)
    mu = rng.normal(size=(500, 4)) * np.array([1.0, 0.2, 0.05, 0.0]) + np.array([0.5, -1.0, 2.0, 3.0])
    t = torch.from_numpy(mu)
    want = int((mu.var(0) > 0.01).sum())
    assert active_units(t.sum(0), t.pow(2).sum(0), 500) == want == 2


def test_train_fits_ppca_in_one_pass_and_it_serves_the_latent_attack(tmp_path):
    runner = CliRunner()
    out = tmp_path / "ppca.safetensors"
    r = runner.invoke(app, ["train", "--data", "synthetic", "--mode", "cvae", "--model", "ppca", "--latent", "6",
                            "--out", str(out), "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)
    assert meta["epochs"] == 1 and meta["model_kwargs"] == {"latent": 6}
    assert meta["history"][0]["active_units"] == 6 and meta["history"][0]["test_recon_mse"] < 1e-4
    model, _ = checkpoint.load_model(out, kind="cvae")
    assert model.closed_form and float(model.noise.max()) < 1e-6  # the synthetic classes are exactly 6-d
    r = runner.invoke(app, ["train", "--data", "synthetic", "--mode", "cvae", "--model", "ppca", "--epochs", "3",
                            "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and "closed form" in r.output


def test_ppca_refuses_a_latent_as_large_as_the_image():
    with pytest.raises(ValueError, match="latent"):
        models.create("ppca", in_shape=SHAPE, num_classes=2, latent=16)


class Rotating(torch.nn.Module):
    """A 'generator' whose reconstruction rotates each image: the same spectrum, other directions."""

    def __init__(self, q):
        super().__init__()
        self.register_buffer("q", q)

    def encode_mean(self, x, y):
        return x.flatten(1)

    def decode_mean(self, z, y):
        return (z @ self.q.T).view(-1, *SHAPE)


def test_kept_share_counts_only_variance_along_the_clean_directions():
    split, _ = gaussian_split(classes=2)
    q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))[0]
    res = generator.fidelity(Rotating(q), split, [0, 1], "cpu", tops=(3,))
    for c in range(2):
        x = split.x[split.y == c].numpy().reshape(-1, 16).astype(np.float64)
        cov = np.cov(x, rowvar=False)
        w, u = np.linalg.eigh(cov)
        u3, w3 = u[:, ::-1][:, :3], w[::-1][:3]
        rotated = q.double().numpy() @ cov @ q.double().numpy().T
        want = np.trace(u3.T @ rotated @ u3) / w3.sum()
        assert abs(res["kept_top3_per_class"][c] - want) < 1e-5 and want < 0.7
        assert abs(res["spectrum_top3_per_class"][c] - 1.0) < 1e-4  # the spectrum alone cannot tell
