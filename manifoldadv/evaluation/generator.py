"""How well a generator keeps the data manifold: its reconstructions G(I(x)) against the clean
images, class by class, in float64.

- `spectrum_ratio`: the study's Figure 2 measure between the reconstructions' and the clean
  set's per-class eigenvalues (geometric mean of their ratios over the top k, each set's own
  eigenvalues in descending order; evaluation.spectrum.summarize). 0.58 at k = 30 for the MNIST
  study's Bernoulli CVAE.
- `kept`: the share of the clean class's top-k eigen-variance the reconstructions keep IN THOSE
  DIRECTIONS: sum_{i<=k} u_i^T C_rec u_i / sum_{i<=k} l_i, with (l_i, u_i) the clean class
  covariance's eigenpairs; stricter, since variance moved to other directions does not count.
Both are averaged over classes (geometric mean for ratios, arithmetic for shares) and given per
class; `generator_metrics` adds the test -ELBO, reconstruction error and active units.
"""

from __future__ import annotations

import numpy as np
import torch

from . import spectrum

TOPS = (5, 10, 30)


def fidelity(cvae, split, classes, device, tops=TOPS) -> dict:
    counts, _, clean_covs = spectrum.accumulate(split, classes, device=device)
    _, _, rec_covs = spectrum.accumulate(split, classes, device=device, transform=spectrum.reconstructed(cvae))
    counts = counts.cpu().numpy()
    clean = spectrum.SetSpectrum("clean", None, "none", counts, spectrum.class_spectra(counts, clean_covs, classes))
    rec = spectrum.SetSpectrum("recon", None, "recon", counts, spectrum.class_spectra(counts, rec_covs, classes))
    out = {}
    for k in tops:
        rows = spectrum.summarize(clean, rec, top=k)
        ratios = [r["top_ratio"] for r in rows]
        out[f"spectrum_top{k}"] = float(np.exp(np.mean(np.log(ratios))))
        out[f"spectrum_top{k}_per_class"] = ratios
    kept = kept_shares(clean_covs, rec_covs, classes, tops)
    for k in tops:
        out[f"kept_top{k}"] = float(np.mean(kept[k]))
        out[f"kept_top{k}_min"] = float(np.min(kept[k]))
        out[f"kept_top{k}_per_class"] = kept[k]
    return out


def kept_shares(clean_covs, rec_covs, classes, tops=TOPS) -> dict[int, list[float]]:
    """Per k, per class: sum_{i<=k} u_i^T C_rec u_i / sum_{i<=k} l_i (float64)."""
    out = {k: [] for k in tops}
    for c in classes:
        w, u = np.linalg.eigh(clean_covs[c].double().cpu().numpy())
        w, u = w[::-1], u[:, ::-1]
        c_rec = rec_covs[c].double().cpu().numpy()
        along = np.einsum("di,de,ei->i", u[:, :max(tops)], c_rec, u[:, :max(tops)])
        for k in tops:
            out[k].append(float(along[:k].sum() / w[:k].sum()))
    return out


def generator_metrics(cvae, test, classes, device) -> dict:
    from ..training.objectives import cvae_test_metrics

    with torch.no_grad():
        return {**cvae_test_metrics(cvae, test, device), **fidelity(cvae, test, classes, device)}
