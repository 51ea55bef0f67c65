"""Any classifier a command takes, by reference: a checkpoint this toolkit wrote (`.safetensors`),
a factory `package.module:function` with weights from a safetensors file (`--weights`), or a
`torch.export` program (`.pt2`, loaded only where no object needs unpickling).

Every model takes images in [0, 1]: a factory's or a program's is wrapped with `--normalize
MEAN,STD` when its normalisation is outside it. Each is checked with one forward pass on the data
set's images before any work, and carries a record of where it came from (`origin`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from .. import checkpoint
from ..errors import CheckpointError, UsageError
from . import Classifier, factory

PROGRAM_SUFFIX = ".pt2"


@dataclass(frozen=True)
class ModelRef:
    text: str
    kind: str  # "checkpoint", "factory" or "program"
    weights: Path | None = None
    normalize: str | None = None

    @property
    def path(self) -> Path | None:
        return None if self.kind == "factory" else Path(self.text)

    @property
    def label(self) -> str:
        return self.text if self.kind == "factory" else Path(self.text).stem


def parse(texts, *, weights=None, normalize: str | None = None) -> list[ModelRef]:
    """The references of a command's model arguments; `weights` go to the factories in order."""
    weights = list(weights or [])
    kinds = []
    for t in map(str, texts):
        if factory.is_factory(t) and not Path(t).exists():
            kinds.append("factory")
        elif t.endswith(PROGRAM_SUFFIX):
            kinds.append("program")
        else:
            kinds.append("checkpoint")
    n_factories = kinds.count("factory")
    if weights and len(weights) != n_factories:
        raise UsageError(f"--weights goes with a factory, one per factory in order: {n_factories} "
                         f"factor{'y' if n_factories == 1 else 'ies'}, {len(weights)} --weights")
    if normalize is not None and not any(k != "checkpoint" for k in kinds):
        raise UsageError("--normalize wraps a factory or a .pt2 program; a checkpoint carries its own normalisation")
    it = iter(weights)
    return [ModelRef(t, k, next(it) if k == "factory" and weights else None, normalize if k != "checkpoint" else None)
            for t, k in zip(map(str, texts), kinds)]


def data_of(refs: list[ModelRef], data: str | None) -> tuple[str, list[dict | None]]:
    """(the data set, each checkpoint's metadata or None): the checkpoints' shared data set, which
    --data must match; a factory or a program has none, so then --data names it."""
    from ..data import external

    metas = [checkpoint.load(r.text, kind="classifier").meta if r.kind == "checkpoint" else None for r in refs]
    names = {m["dataset"] for m in metas if m is not None}
    if len(names) > 1:
        raise UsageError(f"checkpoints come from different data sets: {', '.join(sorted(names))}")
    if data is not None:
        given = external.canonical(data) if external.is_external(data) else data
        if names and names != {given}:
            raise UsageError(f"--data {data} does not match the checkpoints' data set {names.pop()}")
        return given, metas
    if names:
        return names.pop(), metas
    other = next((r for r in refs if r.kind != "checkpoint"), None)
    if other is not None:
        raise UsageError(f"{other.text} carries no data set: give --data (mnist, cifar10, synthetic, npz:PATH "
                         f"or folder:PATH)")
    return None, metas


def load(ref: ModelRef, ds, device="cpu") -> tuple[nn.Module, dict]:
    """(the classifier, its record: mode, label, origin), checked against one forward pass."""
    if ref.kind == "checkpoint":
        model, meta = checkpoint.load_model(ref.text, kind="classifier", device=device, dataset=ds.name)
        origin = {"source": "checkpoint", "path": ref.text, "sha256": checkpoint.digest(ref.text),
                  "model": meta["model"]}
        record = {"ref": ref.text, "mode": meta.get("mode"), "label": meta.get("mode") or ref.label, "origin": origin,
                  "meta": meta}
    else:
        if ref.kind == "factory":
            net = factory.build(ref.text, in_shape=ds.shape, num_classes=ds.num_classes)
            origin = {"source": "factory", "factory": ref.text}
        else:
            net = Program(load_program(ref.text))
            origin = {"source": "program", "path": ref.text, "sha256": checkpoint.digest(ref.text)}
        model = None
        if ref.weights is not None:
            model = _load_weights(net, ref, ds)
            origin.update(weights=str(ref.weights), weights_sha256=checkpoint.digest(ref.weights))
        if model is None:
            mean, std = parse_normalize(ref.normalize, ds.shape[0])
            model = Classifier(net, mean, std, channels_last=factory.has_conv(net))
        origin.update(normalize=_normalisation(model), state_sha256=state_digest(model))
        origin.setdefault("sha256", origin.get("weights_sha256") or origin["state_sha256"])
        model = model.to(device)
        record = {"ref": ref.text, "mode": None, "label": ref.label, "origin": origin, "meta": None}
    model.eval()
    check_forward(model, ds, ref.text, device)
    return model, record


def parse_normalize(text: str | None, channels: int) -> tuple[tuple, tuple]:
    """`--normalize MEAN,STD`: two numbers for every channel, or one mean per channel then one std
    per channel. None: the identity (the model normalises inside)."""
    if text is None:
        return (0.0,) * channels, (1.0,) * channels
    try:
        v = [float(t) for t in text.split(",")]
    except ValueError:
        raise UsageError(f"--normalize takes MEAN,STD numbers, got {text!r}") from None
    if len(v) == 2:
        mean, std = (v[0],) * channels, (v[1],) * channels
    elif len(v) == 2 * channels:
        mean, std = tuple(v[:channels]), tuple(v[channels:])
    else:
        raise UsageError(f"--normalize takes 2 numbers (MEAN,STD) or {2 * channels} (one mean per channel, then "
                         f"one std per channel) for {channels}-channel images, got {len(v)}")
    if not all(s > 0 for s in std) or not all(abs(x) < float("inf") for x in mean):
        raise UsageError(f"--normalize: every std must be > 0 and every number finite, got {text!r}")
    return mean, std


def _normalisation(model: Classifier) -> dict | None:
    m, s = model.normalize.mean.flatten().tolist(), model.normalize.std.flatten().tolist()
    return None if all(x == 0 for x in m) and all(x == 1 for x in s) else {"mean": m, "std": s}


def _load_weights(net: nn.Module, ref: ModelRef, ds) -> Classifier | None:
    """Load --weights into the factory's module, strictly. A manifoldadv checkpoint of that factory
    brings its normalisation (the whole Classifier is returned); plain safetensors fill `net`."""
    from safetensors import safe_open

    path = Path(ref.weights)
    if not path.is_file():
        raise CheckpointError(f"--weights {path}: not found" if not path.exists() else f"--weights {path}: not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(checkpoint.META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise CheckpointError(f"--weights {path}: not a readable safetensors file "
                              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    target, state = net, tensors
    wrapped = None
    if raw is not None:  # one of our checkpoints: its model/ tensors, its normalisation
        meta = json.loads(raw)
        if meta.get("kind") != "classifier":
            raise CheckpointError(f"--weights {path} is a {meta.get('kind')} checkpoint, not a classifier's")
        if ref.normalize is not None:
            raise UsageError(f"--weights {path} is a checkpoint that carries its normalisation; drop --normalize")
        state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        mean, std = meta.get("mean") or (0.0,) * ds.shape[0], meta.get("std") or (1.0,) * ds.shape[0]
        wrapped = target = Classifier(net, mean, std, channels_last=factory.has_conv(net))
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"{what} key{'s' if len(keys) > 1 else ''} {', '.join(keys[:5])}"
                 + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"--weights {path} does not fit {ref.text}: {'; '.join(parts)}")
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln] or [str(exc).splitlines()[0]]
        raise CheckpointError(f"--weights {path} does not fit {ref.text}: {lines[0]}") from None
    bad = next((k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise CheckpointError(f"--weights {path}: tensor {bad!r} holds NaN or infinite values")
    return wrapped


def check_forward(model: nn.Module, ds, label: str, device) -> None:
    """One forward pass on two test images: the model must give [2, num_classes] finite logits."""
    x = ds.test.images(slice(0, min(2, len(ds.test)))).to(device)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - whatever the user's model raises
        raise UsageError(f"{label} fails on a batch of {x.shape[0]} {tuple(ds.shape)} images from {ds.name}: "
                         f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape != (x.shape[0], ds.num_classes):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UsageError(f"{label} gives {got} for a batch of {x.shape[0]} images; {ds.name} has "
                         f"{ds.num_classes} classes, so it must give logits of shape ({x.shape[0]}, {ds.num_classes})")
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise UsageError(f"{label} gives non-finite or non-float outputs on {ds.name}'s images")


def state_digest(model: nn.Module) -> str:
    """The first 16 hex digits of the SHA-256 of a module's state (names and values, by name)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- torch.export programs


class Program(nn.Module):
    """A loaded exported program as a module. Its graph is fixed in the mode it was exported in:
    train()/eval() set only this flag (the program itself refuses them)."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


class _NeedsPickle(Exception):
    pass


def load_program(path) -> nn.Module:
    """torch.export.load with every unpickling path shut: tensors through torch.load's
    weights_only reader, anything else (custom objects, pickled constants) refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found" if not path.exists() else f"{path}: not a file")
    asked = []
    real_load = torch.load

    def weights_only_load(f, *a, **kw):
        kw.pop("weights_only", None)
        return real_load(f, *a, weights_only=True, **kw)

    def refuse(*a, **kw):
        asked.append(True)
        raise _NeedsPickle

    why_not = (f"{path}: this program can only be loaded by unpickling objects, which manifoldadv never does with "
               f"a user's file; give a factory (package.module:function) and its weights as safetensors (--weights)")
    try:
        from torch import export as torch_export

        with mock.patch.object(torch, "load", weights_only_load), mock.patch.object(pickle, "loads", refuse), \
                mock.patch.object(torch._C, "_pickle_load_obj", refuse):
            ep = torch_export.load(str(path))
        return ep.module()
    except _NeedsPickle:
        raise CheckpointError(why_not) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        if asked or isinstance(exc, pickle.UnpicklingError):
            raise CheckpointError(why_not) from None
        raise CheckpointError(f"{path}: not a loadable torch.export program "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
