"""`ppca`: a per-class probabilistic-PCA generator (Tipping & Bishop 1999) in closed form, usable
wherever a CVAE is.

Class y: x = mu_y + W_y z + s_y e, z ~ N(0, I_q), e ~ N(0, I_d), with the maximum-likelihood fit
from the class's training covariance (eigenvalues l_1 >= ... >= l_d, eigenvectors U):
s_y^2 = mean of l_{q+1..d}, W_y = U_q diag(sqrt(l_i - s_y^2)). So the model covariance
W W^T + s^2 I equals the class covariance in its top q directions and keeps its trace.

Encoder = the exact posterior: E[z | x, y] = diag(sqrt(l_i - s^2) / l_i) U_q^T (x - mu_y),
Cov = s^2 diag(1 / l_i). Decoder mean G_y(z) = mu_y + W_y z. The reconstruction G(I(x)) keeps
x's component along eigen-direction i scaled by (1 - s^2 / l_i) and drops the rest, so a latent
attack moves the image along the class's leading q eigen-directions only (the eigen attacks'
manifold, evaluation/eigenbasis.py, by another parametrisation). `train --mode cvae --model ppca`
fits it in one pass (`fit`), no gradient steps.
"""

from __future__ import annotations

import math

import torch

from . import register
from .cvae import CVAE


class PPCA(CVAE):
    closed_form = True  # training.loop calls fit() instead of running epochs of gradient steps

    def __init__(self, in_shape, num_classes, latent: int = 40):
        super().__init__(in_shape, num_classes, latent, likelihood="gaussian")
        d = math.prod(in_shape)
        if not 1 <= latent < d:
            raise ValueError(f"ppca needs 1 <= latent < {d} (the image size), got {latent}")
        self.register_buffer("mean", torch.zeros(num_classes, d))
        self.register_buffer("basis", torch.zeros(num_classes, d, latent))  # U_q, orthonormal columns
        self.register_buffer("lam", torch.ones(num_classes, latent))  # l_1..l_q
        self.register_buffer("noise", torch.ones(num_classes))  # s^2

    @property
    def scale(self) -> torch.Tensor:
        """sqrt(l_i - s^2): W_y = U_q diag(scale)."""
        return (self.lam - self.noise[:, None]).clamp_min(0.0).sqrt()

    def fit(self, split, device="cpu") -> float:
        """The maximum-likelihood fit to `split` (float64 covariance, top-q eigenpairs); returns
        the mean per-pixel squared error of the training reconstructions."""
        from ..evaluation import eigenbasis

        q, c_n = self.latent, self.num_classes
        basis = eigenbasis.compute(split, c_n, q, dataset="ppca-fit", device=device)
        d = basis.vectors.shape[1]
        noise = (basis.totals - basis.values.sum(1)) / (d - q)
        with torch.no_grad():
            self.mean.copy_(basis.means.to(self.mean.dtype))
            self.basis.copy_(basis.vectors.to(self.basis.dtype))
            self.lam.copy_(basis.values.to(self.lam.dtype))
            self.noise.copy_(noise.clamp_min(1e-12).to(self.noise.dtype))
        err, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(split), 1000):
                x = split.images(slice(i, i + 1000)).to(self.mean.device)
                yy = split.y[i:i + 1000].to(self.mean.device)
                err += float((self.decode_mean(self.encode_mean(x, yy), yy) - x).pow(2).sum())
                n += x.numel()
        return err / n

    def _stacked(self) -> torch.Tensor:
        return self.basis.permute(1, 0, 2).reshape(self.basis.shape[1], -1)  # [d, C*q]

    def encode(self, x, y):
        b, rows = x.shape[0], torch.arange(x.shape[0], device=x.device)
        # (x - mu_y)^T U_y for every class in one product, then each row's own class
        proj = (x.flatten(1) @ self._stacked()).view(b, self.num_classes, self.latent)[rows, y]
        proj = proj - torch.einsum("cd,cdq->cq", self.mean, self.basis)[y]
        mu = proj * (self.scale / self.lam)[y]
        logvar = torch.log(self.noise[y, None] / self.lam[y])
        return mu, logvar

    def decode_mean(self, z, y):
        b, rows = z.shape[0], torch.arange(z.shape[0], device=z.device)
        coded = torch.zeros(b, self.num_classes, self.latent, dtype=z.dtype, device=z.device)
        coded = coded.index_put((rows, y), z * self.scale[y])
        x = self.mean[y] + coded.view(b, -1) @ self._stacked().T
        return x.view(-1, *self.in_shape)

    def decode_logits(self, z, y):
        raise NotImplementedError("ppca's decoder is linear: use decode_mean")

    def negative_elbo(self, x, y, generator=None, noise=None, *, objective=False):
        """Per-sample -ELBO in nats with the Gaussian likelihood N(G_y(z), s_y^2 I) and the exact
        posterior (so it equals -log p(x | y)), and the squared error of the posterior mean."""
        mu, logvar = self.encode(x, y)
        eps = noise if noise is not None else torch.randn(mu.shape, generator=generator, device=mu.device,
                                                          dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        s2 = self.noise[y]
        d = x[0].numel()
        rec = (self.decode_mean(z, y) - x).pow(2).flatten(1).sum(1) / (2 * s2) + 0.5 * d * torch.log(2 * math.pi * s2)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        sq = (self.decode_mean(mu, y) - x).pow(2).flatten(1).sum(1)
        return rec + kl, sq.detach()


@register("ppca", kind="cvae", closed_form=True,
          description="per-class probabilistic PCA in closed form (latent 40 by default)")
def ppca(*, in_shape, num_classes, latent: int = 40):
    return PPCA(in_shape, num_classes, latent)
