"""Checkpoints: safetensors files with JSON metadata, written atomically. Never pickle.

Tensors: ``model/<name>`` for the state dict, ``optim/<i>/<key>`` for optimizer state (so
training resumes exactly). Metadata key ``manifoldadv``: a JSON object with at least ``kind``
("classifier" or "cvae"), ``model``, ``model_kwargs``, ``in_shape``, ``num_classes``,
``dataset``, ``mode``, ``hparams``, ``epoch``, ``epochs``, ``complete``, ``seed``, ``versions``,
and for classifiers ``clean_accuracy``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from . import models
from .models.factory import is_factory
from .errors import CheckpointError
from .runtime.outputs import atomic_write_bytes

FORMAT = "manifoldadv-checkpoint"
FORMAT_VERSION = 1
META_KEY = "manifoldadv"


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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


KINDS = ("classifier", "cvae")
# What every field the code reads must be: (check, what it should be, required for kinds).
_FIELDS = {
    "kind": (lambda v: v in KINDS, '"classifier" or "cvae"', KINDS),
    "model": (lambda v: isinstance(v, str) and (v in models.available() or is_factory(v)),
              "a registered model name or a factory (package.module:function)",
              ("classifier", "cvae")),
    "model_kwargs": (lambda v: isinstance(v, dict), "an object", ()),
    "in_shape": (lambda v: isinstance(v, list) and len(v) == 3 and all(_is_int(d) and d > 0 for d in v),
                 "three positive integers", ("classifier", "cvae")),
    "num_classes": (lambda v: _is_int(v) and v >= 1, "a positive integer", ("classifier", "cvae")),
    "dataset": (lambda v: isinstance(v, str), "a data set name", ("classifier", "cvae")),
    "mode": (lambda v: v is None or isinstance(v, str), "a mode name", ()),
    "hparams": (lambda v: isinstance(v, dict), "an object", ()),
    "epoch": (lambda v: _is_int(v) and v >= 0, "a non-negative integer", ()),
    "epochs": (lambda v: _is_int(v) and v >= 1, "a positive integer", ()),
    "complete": (lambda v: isinstance(v, bool), "true or false", ()),
    "history": (lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v), "a list of objects", ()),
    "mean": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of numbers", ()),
    "std": (lambda v: isinstance(v, list) and all(_is_number(x) and x > 0 for x in v), "a list of positive numbers",
            ()),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list)
                  and isinstance(v.get("scalars", {}), dict), "an object with param_groups", ()),
}


def validate_meta(path, meta: dict) -> None:
    """Every field the code reads has the type it needs: a CheckpointError naming the file and the
    field otherwise (checked once, here, so no later use meets a wrong type)."""
    kind = meta.get("kind")
    for field, (ok, what, required) in _FIELDS.items():
        if field not in meta:
            if kind in required:
                raise CheckpointError(f"{path}: checkpoint metadata lacks {field!r}")
            continue
        if not ok(meta[field]):
            raise CheckpointError(f"{path}: checkpoint metadata field {field!r} must be {what}, "
                                  f"got {json.dumps(meta[field])[:60]}")
    channels = meta["in_shape"][0]
    for field in ("mean", "std"):
        if field in meta and len(meta[field]) != channels:
            raise CheckpointError(f"{path}: checkpoint metadata field {field!r} must have {channels} entries "
                                  f"(one per channel), got {len(meta[field])}")


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
        if is_factory(m["model"]):  # never import what a file names: the user names the factory
            raise CheckpointError(f"{self.path} holds a model of the factory {m['model']}; load it as "
                                  f"`{m['model']} --weights {self.path}`")
        kw = dict(m.get("model_kwargs") or {})
        try:
            if m["kind"] == "classifier":
                model = models.create(m["model"], in_shape=m["in_shape"], num_classes=m["num_classes"],
                                      mean=m.get("mean"), std=m.get("std"), **kw)
            else:
                model = models.create(m["model"], in_shape=m["in_shape"], num_classes=m["num_classes"], **kw)
        except CheckpointError:
            raise
        except (TypeError, ValueError) as exc:  # model_kwargs the builder does not take
            raise CheckpointError(f"{self.path}: checkpoint metadata field 'model_kwargs' does not fit model "
                                  f"{m['model']!r} ({exc})") from None
        state = self.state_dict()
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{self.path}: weights do not match model {m['model']!r} ({first})") from None
        bad = next((k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None:  # every number it would give is garbage
            raise CheckpointError(f"{self.path}: tensor {bad!r} holds NaN or infinite values; the model cannot be used")
        return model.to(device)


def load(path, *, kind: str | None = None) -> Checkpoint:
    """Read a checkpoint; a missing, truncated, non-safetensors or wrong-kind file is a
    CheckpointError naming the file and the problem."""
    if kind is not None and kind not in KINDS:
        raise CheckpointError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file (a device or a pipe?)")
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "kind" not in meta:
        raise CheckpointError(f"{path} is not a manifoldadv checkpoint")
    if not isinstance(meta.get("format_version", 0), int) or meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer manifoldadv (format {meta['format_version']})")
    validate_meta(path, meta)
    if kind is not None and meta["kind"] != kind:
        article = "an" if meta["kind"][0] in "aeiou" else "a"
        raise CheckpointError(f"{path} is {article} {meta['kind']} checkpoint, expected a {kind}")
    return Checkpoint(path, meta, tensors)


def load_model(path, *, kind: str, device="cpu", dataset: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The model in `path` and its metadata; `dataset`: refuse one trained on another data set."""
    ck = load(path, kind=kind)
    if dataset is not None and ck.meta["dataset"] != dataset:
        article = "an" if kind[0] in "aeiou" else "a"
        raise CheckpointError(f"{path} is {article} {kind} trained on {ck.meta['dataset']}, not {dataset}")
    return ck.build(device), ck.meta


def digest(path) -> str:
    """A checkpoint's identity in caches and records: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
