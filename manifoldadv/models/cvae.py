"""Conditional VAEs (Sohn et al. 2015): q(z|x,y) and p(x|z,y) conditioned on the one-hot label.

`cvae-mlp` (MNIST, paper B.1): encoder and decoder are 2-layer MLPs with 256 hidden units;
Bernoulli likelihood (sigmoid output) by default; `likelihood="gaussian"` (fixed sigma) suits
grey-level data such as the synthetic set, where a Bernoulli likelihood acts like heavy noise
and the reconstructions regress to the class mean. `cvae-cnn` (CIFAR-10, paper B.2): 4-layer conv encoder
and 4-layer transposed-conv decoder. The latent attack uses the means: I_y(x) = E[z|x,y] and
G_y(z) = E[x|z,y].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register


LIKELIHOODS = ("bernoulli", "gaussian")


class CVAE(nn.Module):
    """free_bits: the training objective counts each example's KL per latent dimension as at
    least this many nats (Kingma et al. 2016, per example), so no pressure pushes a dimension's
    KL below it and fewer units collapse; reported -ELBOs are the true ones."""

    closed_form = False  # PPCA (ppca.py) is fitted, not trained

    def __init__(self, in_shape, num_classes: int, latent: int, likelihood: str = "bernoulli", sigma: float = 0.05,
                 free_bits: float = 0.0):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        self.in_shape, self.num_classes, self.latent = tuple(in_shape), num_classes, latent
        self.likelihood, self.sigma, self.free_bits = likelihood, float(sigma), float(free_bits)

    def onehot(self, y):
        return F.one_hot(y, self.num_classes).float()

    # subclasses: _encode(x, y1h) -> (mu, logvar); _decode(z, y1h) -> logits [B, *in_shape]
    def encode(self, x, y):
        return self._encode(x, self.onehot(y))

    def encode_mean(self, x, y):
        return self.encode(x, y)[0]

    def decode_logits(self, z, y):
        return self._decode(z, self.onehot(y))

    def decode_mean(self, z, y):
        return torch.sigmoid(self.decode_logits(z, y))

    def negative_elbo(self, x, y, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                      *, objective: bool = False):
        """Per-sample -ELBO in nats: reconstruction (Bernoulli, or Gaussian with fixed sigma around
        the sigmoid mean) + KL(q(z|x,y) || N(0, I)). Also returns the per-sample squared error.
        noise: the reparameterisation's N(0, I) draws (default: from `generator`). objective: the
        training loss instead, whose KL per dimension is at least free_bits."""
        mu, logvar = self.encode(x, y)
        eps = noise if noise is not None else torch.randn(mu.shape, generator=generator, device=mu.device,
                                                          dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.decode_logits(z, y)
        sq = (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1)
        if self.likelihood == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        else:
            d = x[0].numel()
            rec = sq / (2 * self.sigma**2) + d * math.log(self.sigma * math.sqrt(2 * math.pi))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
        if objective and self.free_bits > 0:
            kl = kl.clamp_min(self.free_bits)
        return rec + kl.sum(1), sq.detach()


class MLPCVAE(CVAE):
    def __init__(self, in_shape, num_classes, latent=10, hidden=256, **lik):  # lik: likelihood, sigma, free_bits
        super().__init__(in_shape, num_classes, latent, **lik)
        d = math.prod(in_shape)
        self.enc = nn.Sequential(nn.Linear(d + num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent + num_classes, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def _encode(self, x, y1h):
        h = self.enc(torch.cat([x.flatten(1), y1h], dim=1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def _decode(self, z, y1h):
        return self.dec(torch.cat([z, y1h], dim=1)).view(-1, *self.in_shape)


class ConvCVAE(CVAE):
    """Four stride-2 convolutions down to 2x2 (for 32x32 inputs), four transposed ones up."""

    def __init__(self, in_shape, num_classes, latent=128, width=32, **lik):
        super().__init__(in_shape, num_classes, latent, **lik)
        c, h, w = in_shape
        if h % 16 or w % 16:
            raise ValueError(f"cvae-cnn needs image sides divisible by 16, got {h}x{w}")
        ch = [width, 2 * width, 4 * width, 8 * width]
        self.side = (h // 16, w // 16)
        layers, cin = [], c + num_classes
        for co in ch:
            layers += [nn.Conv2d(cin, co, 4, 2, 1), nn.BatchNorm2d(co), nn.LeakyReLU(0.2)]
            cin = co
        self.enc = nn.Sequential(*layers, nn.Flatten())
        flat = ch[-1] * self.side[0] * self.side[1]
        self.enc_head = nn.Linear(flat, 2 * latent)
        self.dec_head = nn.Linear(latent + num_classes, flat)
        layers = []
        for ci, co in zip(ch[::-1], ch[::-1][1:] + [c]):
            layers.append(nn.ConvTranspose2d(ci, co, 4, 2, 1))
            if co != c:
                layers += [nn.BatchNorm2d(co), nn.LeakyReLU(0.2)]
        self.dec = nn.Sequential(*layers)
        self.top = ch[-1]

    def _encode(self, x, y1h):
        planes = y1h[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        mu, logvar = self.enc_head(self.enc(torch.cat([x, planes], dim=1))).chunk(2, dim=1)
        return mu, logvar

    def _decode(self, z, y1h):
        h = self.dec_head(torch.cat([z, y1h], dim=1)).view(-1, self.top, *self.side)
        return self.dec(F.leaky_relu(h, 0.2))


@register("cvae-mlp", kind="cvae", description="conditional VAE, 2-layer MLP encoder/decoder (hidden 256)")
def cvae_mlp(*, in_shape, num_classes, latent: int = 10, hidden: int = 256, likelihood: str = "bernoulli",
             sigma: float = 0.05, free_bits: float = 0.0):
    return MLPCVAE(in_shape, num_classes, latent, hidden, likelihood=likelihood, sigma=sigma, free_bits=free_bits)


@register("cvae-gauss", kind="cvae",
          description="cvae-mlp set to keep the manifold: Gaussian likelihood (sigma 0.1), latent 32, free bits 0.5")
def cvae_gauss(*, in_shape, num_classes, latent: int = 32, hidden: int = 256, likelihood: str = "gaussian",
               sigma: float = 0.1, free_bits: float = 0.5):
    return MLPCVAE(in_shape, num_classes, latent, hidden, likelihood=likelihood, sigma=sigma, free_bits=free_bits)


@register("cvae-cnn", kind="cvae", description="conditional VAE, 4-layer conv encoder/decoder")
def cvae_cnn(*, in_shape, num_classes, latent: int = 128, width: int = 32, likelihood: str = "bernoulli",
             sigma: float = 0.05, free_bits: float = 0.0):
    return ConvCVAE(in_shape, num_classes, latent, width, likelihood=likelihood, sigma=sigma, free_bits=free_bits)
