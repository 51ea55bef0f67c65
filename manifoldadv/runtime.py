"""Process-wide settings shared by the commands: device choice, seeding, versions."""

from __future__ import annotations

import platform
import random

import numpy as np
import torch

from . import __version__
from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise UsageError(f"--device cuda requested but {why}; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict[str, str | None]:
    from . import ops

    return {
        "manifoldadv": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "extension": "loaded" if ops.extension_loaded() else "missing",
    }
