"""Data sets from outside: `npz:PATH` (arrays) and `folder:PATH` (image files, one folder per class).

Both become a `Dataset` like the built-in ones (images in [0, 1], [N, C, H, W], int64 labels), so
every command takes them. Nothing is unpickled: `np.load(allow_pickle=False)`, Pillow for images.
A data set's name is its canonical spec: the scheme, the resolved path, and a folder's --resize
(`folder:/abs/path@32x32`), so checkpoints trained on it find it again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, UsageError
from .datasets import Dataset, Split, split_digest

SCHEMES = ("npz", "folder")
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_PIL = ("L", "1", "LA", "I;16", "I", "P")  # Pillow image modes read as one channel (P: when its palette is grey)
PALETTE_PIL = ("P",)
CACHE_FORMAT = 1
_RESIZE = re.compile(r"^(\d+)[x,](\d+)$")


def is_external(name: str) -> bool:
    return isinstance(name, str) and name.split(":", 1)[0] in SCHEMES and ":" in name


def parse_resize(text: str | None) -> tuple[int, int] | None:
    """`--resize H,W` (or HxW) as (H, W)."""
    if text is None:
        return None
    m = _RESIZE.match(text.strip())
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise UsageError(f"--resize takes H,W (two positive whole numbers), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def split_name(name: str) -> tuple[str, Path, tuple[int, int] | None]:
    """(scheme, path, resize) of an external data set's name."""
    scheme, rest = name.split(":", 1)
    resize = None
    if scheme == "folder" and "@" in rest:
        head, tail = rest.rsplit("@", 1)
        if _RESIZE.match(tail):
            rest, resize = head, parse_resize(tail)
    if not rest:
        raise UsageError(f"--data {name}: give a path after '{scheme}:'")
    return scheme, Path(rest).expanduser(), resize


def canonical(name: str, resize: tuple[int, int] | None = None) -> str:
    """The name results and checkpoints record: resolved path, and the resize a folder was read at."""
    scheme, path, own = split_name(name)
    resize = resize or own
    if resize is not None and scheme != "folder":
        raise UsageError(f"--resize applies to folder: data sets, not {scheme}:")
    text = f"{scheme}:{path.resolve()}"
    return text + (f"@{resize[0]}x{resize[1]}" if resize else "")


def slug(name: str) -> str:
    """A file-name-safe tag for a data set (caches, default checkpoint names)."""
    if not is_external(name):
        return name
    scheme, path, resize = split_name(name)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem or "data")[:40]
    return f"{scheme}-{stem}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def load(name: str, resize: tuple[int, int] | None = None) -> Dataset:
    """The external data set `name` (scheme:path); read once per process and file state."""
    name = canonical(name, resize)
    scheme, path, resize = split_name(name)
    if not path.exists():
        raise DataError(f"--data {scheme}:{path}: not found")
    if scheme == "npz":
        if not path.is_file():
            raise DataError(f"--data npz:{path}: not a file")
        st = path.stat()
        return _load_npz_cached(name, st.st_size, st.st_mtime_ns)
    if not path.is_dir():
        raise DataError(f"--data folder:{path}: not a folder (it needs train/<class>/ and test/<class>/)")
    return _load_folder(name, path, resize)


# --------------------------------------------------------------------------- checks


def _layout(x: np.ndarray, what: str) -> np.ndarray:
    """x as [N, C, H, W]: NHW (grey), NCHW or NHWC with 1 or 3 channels."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{what}: images must be N x H x W, N x C x H x W or N x H x W x C, got shape {x.shape}")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise DataError(f"{what}: images need 1 or 3 channels (NCHW or NHWC), got shape {x.shape}")


def _images(x: np.ndarray, what: str) -> torch.Tensor:
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(_layout(x, what)))
    if x.dtype.kind != "f":
        raise DataError(f"{what}: images must be uint8 (0-255) or float (0-1), got {x.dtype}")
    if not np.isfinite(x).all():
        raise DataError(f"{what}: images hold NaN or infinite values")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{what}: float images must be in [0, 1], got values in [{lo:g}, {hi:g}] "
                        f"(divide 0-255 images by 255, or store them as uint8)")
    return torch.from_numpy(np.ascontiguousarray(_layout(x, what)).astype(np.float32))


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{what}: labels must be one number per image ({n}), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what}: labels must be whole numbers, got {y.dtype}")
    return y.astype(np.int64)


def _dataset(name: str, arrays: dict, info: dict, classes: list[str] | None = None) -> Dataset:
    """Validate the four arrays and make the Dataset: labels 0..C-1 with C from the training split
    (or the class names), every class in training, one image shape."""
    x_train, x_test = _images(arrays["x_train"], f"{name} x_train"), _images(arrays["x_test"], f"{name} x_test")
    y_train = _labels(arrays["y_train"], x_train.shape[0], f"{name} y_train")
    y_test = _labels(arrays["y_test"], x_test.shape[0], f"{name} y_test")
    if len(y_train) == 0 or len(y_test) == 0:
        raise DataError(f"{name}: the training and the test split each need at least one image")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: training images are {tuple(x_train.shape[1:])}, test images "
                        f"{tuple(x_test.shape[1:])}; they must match")
    num_classes = len(classes) if classes is not None else int(y_train.max()) + 1
    for split, y in (("y_train", y_train), ("y_test", y_test)):
        if y.min() < 0 or y.max() >= num_classes:
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise DataError(f"{name} {split}: label {bad} out of range 0..{num_classes - 1} "
                            f"(the classes are those of the training split)")
    if num_classes < 2:
        raise DataError(f"{name}: needs at least two classes, found {num_classes}")
    missing = sorted(set(range(num_classes)) - set(np.unique(y_train).tolist()))
    if missing:
        raise DataError(f"{name}: class {missing[0]} has no training image (labels must be 0..C-1, each used)")
    train = Split(x_train, torch.from_numpy(y_train))
    test = Split(x_test, torch.from_numpy(y_test))
    imgs = train.images()
    mean = tuple(float(v) for v in imgs.mean(dim=(0, 2, 3), dtype=torch.float64))
    std = tuple(max(float(v), 1e-3) for v in imgs.double().std(dim=(0, 2, 3)))
    info = dict(info, classes=classes or [str(c) for c in range(num_classes)])
    return Dataset(name, train, test, num_classes, tuple(int(d) for d in x_train.shape[1:]), mean, std, info)


# --------------------------------------------------------------------------- npz


@functools.lru_cache(maxsize=4)
def _load_npz_cached(name: str, size: int, mtime_ns: int) -> Dataset:
    _, path, _ = split_name(name)
    try:
        with np.load(path, allow_pickle=False) as z:
            present = set(z.files)
            missing = [a for a in NPZ_ARRAYS if a not in present]
            if missing:
                raise DataError(f"npz:{path}: missing array{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                f"(it needs {', '.join(NPZ_ARRAYS)})")
            arrays = {a: z[a] for a in NPZ_ARRAYS}
            classes = [str(c) for c in z["classes"].tolist()] if "classes" in present else None
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(f"npz:{path}: cannot read without unpickling ({str(exc).splitlines()[0]}); store plain "
                        f"numeric arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"npz:{path}: not a readable .npz file ({str(exc).splitlines()[0] or type(exc).__name__})") from None
    return _dataset(name, arrays, {"source": "npz", "path": str(path)}, classes)


# --------------------------------------------------------------------------- folder


def _listing(root: Path) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> image files, sorted by name."""
    out = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise DataError(f"folder:{root}: no {split}/ folder (it needs train/<class>/*.png|jpg and test/<class>/*)")
        out[split] = {c.name: sorted(p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                      for c in sorted(d.iterdir(), key=lambda p: p.name) if c.is_dir()}
    return out


def folder_cache_dir() -> Path:
    from ..evaluation.eigenbasis import CACHE_ENV

    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "manifoldadv").expanduser() / "folders"


def _load_folder(name: str, root: Path, resize) -> Dataset:
    listing = _listing(root)
    train_classes = [c for c, files in listing["train"].items() if files]
    if not train_classes:
        raise DataError(f"folder:{root}: no images (.png, .jpg) in train/<class>/")
    extra = sorted(c for c, files in listing["test"].items() if files and c not in train_classes)
    if extra:
        raise DataError(f"folder:{root}: test/{extra[0]}/ is a class the training split lacks "
                        f"(train has {', '.join(train_classes)})")
    if not any(listing["test"].values()):
        raise DataError(f"folder:{root}: no images (.png, .jpg) in test/<class>/")
    files = [(s, c, p) for s in ("train", "test") for c, ps in listing[s].items() if c in train_classes for p in ps]
    key = hashlib.sha256(json.dumps([name, CACHE_FORMAT] + [[str(p.relative_to(root)), p.stat().st_size]
                                                           for _, _, p in files]).encode()).hexdigest()[:16]
    cache = folder_cache_dir() / f"{slug(name)}-{key}.npz"
    arrays = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arrays = {a: z[a] for a in NPZ_ARRAYS}
        except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError):
            arrays = None  # a damaged cache is rebuilt
    if arrays is None:
        arrays = _read_images(root, files, train_classes, resize)
        _write_cache(cache, arrays)
    info = {"source": "folder", "path": str(root), "resize": list(resize) if resize else None, "cache": str(cache)}
    return _dataset(name, arrays, info, train_classes)


def _read_images(root: Path, files, classes: list[str], resize) -> dict:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("folder: data sets need Pillow (pip install pillow)") from None
    index = {c: i for i, c in enumerate(classes)}
    imgs = {"train": [], "test": []}
    labels = {"train": [], "test": []}
    opened = []
    for split, c, p in files:
        try:
            with Image.open(p) as im:
                im.load()
                opened.append((split, c, p, im.copy()))
        except Exception as exc:  # Pillow raises many types for a bad file
            raise DataError(f"{p}: not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    grey = all(im.mode in GREY_PIL and not _palette_colour(im) for *_, im in opened)
    first = None
    for split, c, p, im in opened:
        im = im.convert("L" if grey else "RGB")
        if resize is not None:
            im = im.resize((resize[1], resize[0]), Image.BILINEAR)
        elif first is None:
            first = (p, im.size)
        elif im.size != first[1]:
            raise DataError(f"folder:{root}: images differ in size ({first[0].relative_to(root)} is "
                            f"{first[1][1]}x{first[1][0]}, {p.relative_to(root)} is {im.size[1]}x{im.size[0]}); "
                            f"give --resize H,W")
        a = np.asarray(im, dtype=np.uint8)
        imgs[split].append(a[None] if grey else a.transpose(2, 0, 1))
        labels[split].append(index[c])
    return {"x_train": np.stack(imgs["train"]), "y_train": np.asarray(labels["train"], dtype=np.int64),
            "x_test": np.stack(imgs["test"]), "y_test": np.asarray(labels["test"], dtype=np.int64)}


def _palette_colour(im) -> bool:
    if im.mode not in PALETTE_PIL:
        return False
    rgb = np.asarray(im.convert("RGB"))
    return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _write_cache(path: Path, arrays: dict) -> None:
    import io

    from ..runtime.outputs import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError:  # a read-only cache only costs a re-read next time
        pass


# --------------------------------------------------------------------------- identity


def digest(ds: Dataset) -> str:
    """Both splits' split_digest, kept in ds.info."""
    cached = ds.info.get("digest")
    if cached:
        return cached
    ds.info["digest"] = split_digest(ds.train, ds.test)
    return ds.info["digest"]


def describe(ds: Dataset) -> dict:
    """What results record about the data: name, sizes, shape, classes, digest."""
    d = {"name": ds.name, "train": len(ds.train), "test": len(ds.test), "shape": list(ds.shape),
         "num_classes": ds.num_classes, "digest": digest(ds)}
    if "classes" in ds.info:
        d["classes"] = ds.info["classes"]
    if ds.info.get("resize"):
        d["resize"] = ds.info["resize"]
    return d


# --------------------------------------------------------------------------- defaults


def defaults(name: str):
    """The schedule of an external data set: models by its image shape, the MNIST-like training
    schedule, and no attack budgets (an eps means nothing without knowing the data: every attack's
    budget comes from its option, --eps, --l2-eps, ...)."""
    from ..config import CVAEDefaults, DataDefaults, EigenDefaults, QuickSchedule

    ds = load(name)
    c, h, w = ds.shape
    model = "lenet5" if c == 1 and min(h, w) >= 16 else "resnet20" if min(h, w) >= 8 else "mlp"
    cvae = (CVAEDefaults("cvae-cnn", epochs=50, lr=1e-3, batch_size=64, latent=128)
            if c > 1 and h % 16 == 0 and w % 16 == 0 else
            CVAEDefaults("cvae-mlp", epochs=20, lr=1e-3, batch_size=64, latent=10))
    smallest = min(int((ds.train.y == k).sum()) for k in range(ds.num_classes))
    return DataDefaults(
        model=model, epochs=30, adv_start=10, batch_size=128, lr=1e-3, weight_decay=5e-4,
        train_eps={}, test_eps={}, steps=10, latent_eps=None, latent_steps=10, augment=False, eps_warmup=2,
        cvae=cvae, quick=QuickSchedule(epochs=2, adv_start=1, steps=5, cvae_epochs=2, train=len(ds.train),
                                       test=len(ds.test)),
        eigen=EigenDefaults(k=max(1, min(100, ds.dim // 8, smallest - 1)), eps=None, steps=10, step_ratio=0.5),
    )
