"""Spectra from the ``theory`` commands' sources: a comma-separated list, a .npy file of
eigenvalues or of a covariance, a power law, or a class of the real MNIST training set (through
the data and op layers). Each gives the eigenvalues, validated and sorted, and a description."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..runtime import console
from ..errors import UsageError
from .closed_form import as_spectrum, ppca

DEFAULT_EIGENVALUES = "4,2,1,0.5"


def parse_eigenvalues(text: str) -> np.ndarray:
    """``--eigenvalues``: comma-separated numbers (validated later by ``as_spectrum``)."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UsageError(f"--eigenvalues must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise UsageError("--eigenvalues is empty")
    return np.array(vals, dtype=np.float64)


def load_npy(path: Path) -> np.ndarray:
    """Eigenvalues from a .npy file of eigenvalues or of a symmetric covariance matrix."""
    if not path.is_file():
        raise UsageError(f"--spectrum: no such file {path}")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise UsageError(f"--spectrum: {path} is not a .npy file (written by numpy.save)")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # malformed file: one line, no traceback
        raise UsageError(f"--spectrum: cannot read {path} as .npy ({exc})") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        return arr
    if arr.ndim == 2 and arr.shape[0] == arr.shape[1]:
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"--spectrum: {path} has non-finite entries")
        asym = np.max(np.abs(arr - arr.T))
        if asym > 1e-8 * max(1.0, float(np.max(np.abs(arr)))):
            raise UsageError(f"--spectrum: {path} is a square matrix but not symmetric (a covariance is)")
        return np.linalg.eigvalsh(0.5 * (arr + arr.T))
    raise UsageError(f"--spectrum: {path} must hold a 1-D array of eigenvalues or a square covariance, got shape {arr.shape}")


def mnist_spectrum(k: int, data_root=None) -> np.ndarray:
    """Eigenvalues (float64) of the pixel covariance of class k of the real MNIST training set:
    the class's images go through the covariance op ``ClassCovariance`` (float64 state), then
    ``eigvalsh`` in float64. Only class k's rows are fed to the op (the other classes' covariances
    are not needed)."""
    import torch

    from ..data import load_dataset
    from ..ops import ClassCovariance

    ds = load_dataset("mnist", data_root)
    console.log(f"computing the covariance of MNIST class {k} (training set, {ds.dim} pixels) ...")
    idx = torch.nonzero(ds.train.y == k).flatten()
    if idx.numel() < 2:
        raise UsageError(f"mnist:{k}: class {k} has {idx.numel()} training images")
    acc = ClassCovariance(ds.num_classes, ds.dim)
    for start in range(0, idx.numel(), 4096):
        part = idx[start:start + 4096]
        acc.update(ds.train.images(part).reshape(len(part), -1).to(torch.float32), ds.train.y[part])
    counts, _, covs = acc.finalize()
    return np.linalg.eigvalsh(covs[k].to(torch.float64).numpy())


def resolve_spectrum(eigenvalues, spectrum, d, alpha, data_root=None, default: str = DEFAULT_EIGENVALUES):
    """(eigenvalues sorted decreasing, a description) from the command-line options."""
    if eigenvalues is not None and spectrum is not None:
        raise UsageError("give --eigenvalues or --spectrum, not both")
    if (d is not None or alpha is not None) and spectrum != "powerlaw":
        raise UsageError("--d and --alpha go with --spectrum powerlaw")
    if spectrum is None:
        text = default if eigenvalues is None else eigenvalues
        return as_spectrum(parse_eigenvalues(text)), f"eigenvalues {text}"
    if spectrum == "powerlaw":
        d = 784 if d is None else d
        alpha = 1.0 if alpha is None else alpha
        if not math.isfinite(alpha):
            raise UsageError("--alpha must be finite")
        lam = np.arange(1, d + 1, dtype=np.float64) ** (-alpha)
        return as_spectrum(lam), f"powerlaw d={d} alpha={alpha:g}"
    if spectrum.startswith("mnist:"):
        label = spectrum.split(":", 1)[1]
        if not label.isdigit() or not 0 <= int(label) <= 9:
            raise UsageError(f"--spectrum mnist:K needs a class K in 0..9, got {spectrum!r}")
        return as_spectrum(mnist_spectrum(int(label), data_root)), f"MNIST train class {label}"
    if spectrum.endswith(".npy") or Path(spectrum).exists():
        return as_spectrum(load_npy(Path(spectrum))), f"file {spectrum}"
    raise UsageError(f"--spectrum must be FILE.npy, 'powerlaw' or 'mnist:K', got {spectrum!r}")


def describe(lam: np.ndarray, q: int, source: str) -> dict:
    """The spectrum's summary every ``theory`` document starts with."""
    sigma2, _ = ppca(lam, q)
    return {"source": source, "d": int(lam.size), "rank": int(np.sum(lam > 0)), "q": int(q), "sigma2": sigma2,
            "lambda_max": float(lam.max()), "lambda_min": float(lam.min())}
