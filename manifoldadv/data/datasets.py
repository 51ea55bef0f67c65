"""Data sets: real MNIST (IDX files), CIFAR-10 (python pickle batches, read safely) and a
built-in synthetic set whose classes lie exactly on known low-dimensional affine manifolds.

Images are float32 in [0, 1] when handed out; normalisation lives inside the models.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, UsageError

DATA_ENV = "MANIFOLDADV_DATA"


@dataclass
class Split:
    """Images (uint8 0..255 or float32 0..1, [N, C, H, W]) and int64 labels [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def images(self, index=None) -> torch.Tensor:
        x = self.x if index is None else self.x[index]
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x.float()

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.x[:n], self.y[:n])


def split_digest(*splits: Split) -> str:
    """What a result or a basis came from: the first 16 hex digits of the SHA-256 of the splits'
    images (as stored, cast to float32) and labels (int64), in order."""
    h = hashlib.sha256()
    for split in splits:
        h.update(split.x.detach().cpu().float().contiguous().numpy().tobytes())
        h.update(split.y.detach().cpu().long().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        c, h, w = self.shape
        return c * h * w


def data_root(root: str | os.PathLike | None = None) -> Path:
    """`--data-root`, else $MANIFOLDADV_DATA, else ~/.cache/manifoldadv."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "manifoldadv"


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    download: bool = False,
    resize: tuple[int, int] | None = None,
) -> Dataset:
    """Load a data set by name (a built-in one, or npz:PATH / folder:PATH, see external.py);
    `limit` keeps the first N training and N test examples."""
    from . import external

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if external.is_external(name):
        ds = external.load(name, resize)
        ds = replace(ds, info={k: v for k, v in ds.info.items() if k != "digest"})  # the cached one stays whole
    else:
        name = name.lower()
        if name not in SOURCES:
            raise UsageError(f"unknown data set {name!r} for --data; choose one of {', '.join(DATASETS)}, npz:PATH or folder:PATH")
        if resize is not None:
            raise UsageError("--resize applies to folder: data sets")
        ds = SOURCES[name](data_root(root), download)
    if limit is not None:
        ds.train, ds.test = ds.train.head(limit), ds.test.head(limit)
    return ds


# --------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def _find_file(root: Path, subdirs: list[str], stem: str) -> Path | None:
    for sub in subdirs:
        for suffix in ("", ".gz"):
            p = root / sub / (stem + suffix)
            if p.is_file():
                return p
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or gzipped), checking its magic number and length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); the file may be truncated or not gzip") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path}: not an IDX uint8 file (bad magic number)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: truncated or padded: {len(raw) - header} data bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(root: Path, *, download: bool = False) -> Dataset:
    subdirs = ["", "MNIST/raw"]
    paths = {k: _find_file(root, subdirs, stem) for k, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing and download:
        _download_with_torchvision("MNIST", root)
        paths = {k: _find_file(root, subdirs, stem) for k, stem in MNIST_FILES.items()}
        missing = [MNIST_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"MNIST file {missing[0]}[.gz] not found in {root} or {root / 'MNIST/raw'}; "
            f"put the four IDX files there, point --data-root at them, or use --download"
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        xi, yi = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if xi.ndim != 3 or xi.shape[1:] != (28, 28):
            raise DataError(f"{paths[f'{split}_images']}: expected N x 28 x 28 images, got {xi.shape}")
        if yi.ndim != 1 or yi.shape[0] != xi.shape[0]:
            raise DataError(f"{paths[f'{split}_labels']}: {yi.shape[0]} labels for {xi.shape[0]} images")
        if yi.max() > 9:
            raise DataError(f"{paths[f'{split}_labels']}: label {int(yi.max())} out of range 0..9")

    def split(prefix):
        x = torch.from_numpy(arrays[f"{prefix}_images"].copy()).unsqueeze(1)
        y = torch.from_numpy(arrays[f"{prefix}_labels"].astype(np.int64))
        return Split(x, y)

    return Dataset("mnist", split("train"), split("test"), 10, (1, 28, 28), MNIST_MEAN, MNIST_STD)


# --------------------------------------------------------------------------- CIFAR-10

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _numpy_reconstruct():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return multiarray._reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Loads CIFAR batches: dicts of bytes, ints, lists and numpy arrays, and nothing else.

    Any other global (the way a malicious pickle runs code) is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (top level is {type(obj).__name__})")
    get = lambda k: obj.get(k, obj.get(k.decode()))  # noqa: E731  (py2 pickles: bytes keys)
    data, labels = get(b"data"), get(b"labels")
    if data is None or labels is None:
        raise DataError(f"{path}: not a CIFAR-10 batch (no data/labels entries)")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: expected uint8 data of shape N x 3072, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: labels do not match the images or are out of range 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: Path, *, download: bool = False) -> Dataset:
    base = root if (root / CIFAR_TEST[0]).is_file() else root / CIFAR_DIR
    if not (base / CIFAR_TEST[0]).is_file() and download:
        _download_with_torchvision("CIFAR10", root)
    for name in CIFAR_TRAIN + CIFAR_TEST:
        if not (base / name).is_file():
            raise DataError(
                f"CIFAR-10 file {name} not found in {root / CIFAR_DIR}; unpack cifar-10-python.tar.gz "
                f"into {root}, point --data-root at it, or use --download"
            )

    def split(names):
        parts = [read_cifar_batch(base / n) for n in names]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return Split(torch.from_numpy(x), torch.from_numpy(y))

    return Dataset("cifar10", split(CIFAR_TRAIN), split(CIFAR_TEST), 10, (3, 32, 32), CIFAR_MEAN, CIFAR_STD)


def _download_with_torchvision(kind: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except Exception:
        url = {"MNIST": "the four IDX .gz files (train/t10k images and labels)",
               "CIFAR10": "cifar-10-python.tar.gz from the CIFAR-10 page"}[kind]
        raise DataError(
            f"--download needs torchvision, which is not importable here; download {url} yourself "
            f"and put them in {root} (or install manifoldadv[vision])"
        ) from None
    root.mkdir(parents=True, exist_ok=True)
    getattr(tvd, kind)(str(root), train=True, download=True)
    getattr(tvd, kind)(str(root), train=False, download=True)


# --------------------------------------------------------------------------- synthetic

SYNTH_RANK = 6  # dimension of each class's affine manifold
SYNTH_TRAIN_PER_CLASS, SYNTH_TEST_PER_CLASS = 600, 1000  # > 784 test rows per class: full-rank covariances


def _smooth_field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """A smooth random 28x28 field with zero mean and unit max-abs (Gaussian-blurred noise)."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal((n, 28, 28)), sigma=(0, sigma, sigma), mode="wrap")
    f -= f.mean(axis=(1, 2), keepdims=True)
    return f / np.abs(f).max(axis=(1, 2), keepdims=True)


def make_synthetic(seed: int = 0) -> Dataset:
    """Ten classes of 1x28x28 images, each exactly on a 6-dimensional affine manifold.

    Class c: x = p_c + sum_k z_k (p_{t_k} - p_c), z_k ~ U(0, 0.12), for six other classes t_k.
    p_c is a near-binary blob prototype in [0.05, 0.95]. Moving along the manifold morphs an
    image towards look-alikes of other classes (as on MNIST), while the prototype keeps at least
    28% of the weight, so classes stay apart (a robust classifier exists at eps 0.25). Every image
    is a convex combination of prototypes: it is in [0, 1] without clipping, and each class's
    covariance has rank exactly 6 with comparable eigenvalues (its tail is float32 rounding).
    """
    rng = np.random.default_rng(seed)
    k, morph_max = 10, 0.12
    protos = (0.05 + 0.9 / (1.0 + np.exp(-8.0 * _smooth_field(rng, k, 2.5)))).reshape(k, -1)
    targets = np.stack([rng.choice([j for j in range(k) if j != c], size=SYNTH_RANK, replace=False) for c in range(k)])
    bases = protos[targets] - protos[:, None, :]  # [k, rank, d]
    splits = {}
    for name, n in {"train": SYNTH_TRAIN_PER_CLASS, "test": SYNTH_TEST_PER_CLASS}.items():
        labels = np.repeat(np.arange(k), n)
        z = rng.uniform(0.0, morph_max, size=(labels.size, SYNTH_RANK))
        x = protos[labels] + np.einsum("nrd,nr->nd", bases[labels], z)
        order = rng.permutation(labels.size)
        x, labels = x[order], labels[order]
        if x.min() < 0.0 or x.max() > 1.0:  # pragma: no cover - convex combinations cannot leave [0, 1]
            raise RuntimeError("synthetic data left [0, 1]")
        splits[name] = Split(
            torch.from_numpy(x.astype(np.float32)).reshape(-1, 1, 28, 28), torch.from_numpy(labels.astype(np.int64))
        )
    mean, std = float(splits["train"].x.mean()), float(splits["train"].x.std())
    info = {"manifold_rank": SYNTH_RANK, "prototypes": protos, "targets": targets, "seed": seed}
    return Dataset("synthetic", splits["train"], splits["test"], k, (1, 28, 28), (mean,), (std,), info)


# The data sets by name: the one list the CLI choices, the defaults (config.py) and the study follow.
SOURCES = {
    # the data set is fixed: --seed varies training, not data
    "synthetic": lambda root, download: make_synthetic(seed=0),
    "mnist": lambda root, download: load_mnist(root, download=download),
    "cifar10": lambda root, download: load_cifar10(root, download=download),
}
DATASETS = tuple(SOURCES)
