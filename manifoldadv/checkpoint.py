"""Checkpoints: safetensors files with JSON metadata, written atomically. Never pickle.

Tensors: ``model/<name>`` for the state dict, ``optim/<i>/<key>`` for optimizer state (so
training resumes exactly). Metadata key ``manifoldadv``: a JSON object with at least ``kind``
("classifier" or "cvae"), ``model``, ``model_kwargs``, ``in_shape``, ``num_classes``,
``dataset``, ``mode``, ``hparams``, ``epoch``, ``epochs``, ``complete``, ``seed``, ``versions``,
and for classifiers ``clean_accuracy``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from . import models
from .errors import CheckpointError

FORMAT = "manifoldadv-checkpoint"
FORMAT_VERSION = 1
META_KEY = "manifoldadv"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _flatten_optimizer(opt_state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim/{idx}/{key}"] = val.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{key}"] = val
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, info: dict) -> dict:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = t
    for name, val in info.get("scalars", {}).items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = val
    return {"state": state, "param_groups": info["param_groups"]}


def save(path, model: torch.nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None = None) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION)
    if optimizer is not None:
        opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_info
    else:
        meta.pop("optimizer", None)
    blob = st_save(tensors, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(Path(path), blob)


class Checkpoint:
    def __init__(self, path: Path, meta: dict, tensors: dict[str, torch.Tensor]):
        self.path, self.meta, self.tensors = path, meta, tensors

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def state_dict(self) -> dict:
        return {k[len("model/"):]: v for k, v in self.tensors.items() if k.startswith("model/")}

    def optimizer_state(self) -> dict | None:
        if "optimizer" not in self.meta:
            return None
        opt = {k: v for k, v in self.tensors.items() if k.startswith("optim/")}
        return _unflatten_optimizer(opt, self.meta["optimizer"])

    def build(self, device="cpu") -> torch.nn.Module:
        """Recreate the model from the metadata and load the weights."""
        m = self.meta
        kw = dict(m.get("model_kwargs") or {})
        if m["kind"] == "classifier":
            model = models.create(m["model"], in_shape=m["in_shape"], num_classes=m["num_classes"],
                                  mean=m.get("mean"), std=m.get("std"), **kw)
        else:
            model = models.create(m["model"], in_shape=m["in_shape"], num_classes=m["num_classes"], **kw)
        try:
            model.load_state_dict(self.state_dict())
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{self.path}: weights do not match model {m['model']!r} ({first})") from None
        return model.to(device)


def load(path, *, kind: str | None = None) -> Checkpoint:
    """Read a checkpoint; a missing, truncated, non-safetensors or wrong-kind file is a
    CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers/lengths
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({msg})") from None
    if raw_meta is None:
        raise CheckpointError(f"{path} is a safetensors file but not a manifoldadv checkpoint (no metadata)")
    try:
        meta = json.loads(raw_meta)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from None
    if meta.get("format") != FORMAT or "kind" not in meta:
        raise CheckpointError(f"{path} is not a manifoldadv checkpoint")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer manifoldadv (format {meta['format_version']})")
    if kind is not None and meta["kind"] != kind:
        article = "an" if meta["kind"][0] in "aeiou" else "a"
        raise CheckpointError(f"{path} is {article} {meta['kind']} checkpoint, expected a {kind}")
    return Checkpoint(path, meta, tensors)


def load_model(path, *, kind: str, device="cpu") -> tuple[torch.nn.Module, dict]:
    ck = load(path, kind=kind)
    return ck.build(device), ck.meta
