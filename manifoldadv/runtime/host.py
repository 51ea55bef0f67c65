"""Process-wide settings shared by the commands: device choice, seeding, versions."""

from __future__ import annotations

import functools
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import UsageError

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


def derive_seed(seed: int, index: int, salt: int) -> int:
    """A seed for item `index` (an epoch, an evaluation batch) of a run seeded with `seed`; the
    salt keeps the streams of different uses apart."""
    return (int(seed) * 1_000_003 + int(index) * 7919 + salt) % (2**63 - 1)


def versions() -> dict[str, str | bool | None]:
    """What made a result: package versions, the extension, and the code's git commit (with
    whether the working tree had uncommitted changes; None outside a git checkout)."""
    from .. import ops

    commit, dirty = git_state()
    return {
        "manifoldadv": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "extension": "loaded" if ops.extension_loaded() else "missing",
        "commit": commit,
        "dirty": dirty,
    }


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes to tracked files) of the checkout this package runs from."""
    return checkout_state(Path(__file__).resolve().parents[2])


def checkout_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) when `root` is the top of a git checkout; (None, None) otherwise, also when
    `root` merely lies inside another repository (a source tarball unpacked in someone's project
    must not record that project's commit)."""

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != Path(root).resolve():
            return None, None
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None
