"""A small model registry (timm-style): `create(name, ...)` builds any registered model.

Classifiers take images in [0, 1]; their first layer normalises with the data set's mean/std
(stored as buffers, so they travel with the checkpoint). Add a model by decorating its builder
with `@register("name", kind="classifier", description=...)` in a module imported below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..runtime.accel import AUTOCAST_DTYPE
from ..errors import UsageError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "classifier" or "cvae" (a generator)
    builder: Callable[..., nn.Module]
    description: str
    closed_form: bool = False  # a generator fitted in one pass (ppca), not trained by gradient steps


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, kind: str = "classifier", description: str = "", closed_form: bool = False):
    """Add a model builder under `name` (the data sets' default models are in config.py)."""
    def deco(builder):
        _REGISTRY[name] = ModelSpec(name, kind, builder, description, closed_form)
        return builder

    return deco


def default_kwargs(name: str) -> dict:
    """The keyword defaults of `name`'s builder (what a run records when it overrides none)."""
    import inspect

    params = inspect.signature(spec(name).builder).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def available(kind: str | None = None) -> list[str]:
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def spec(name: str) -> ModelSpec:
    from . import factory

    if factory.is_factory(name):  # a user's architecture (models/factory.py): a classifier
        return ModelSpec(name, "classifier", lambda **kw: factory.build(name, **kw), f"factory {name}")
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    return _REGISTRY[name]


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Normalisation + network. Convolutional nets run channels-last on every device: on CPU
    that makes the input-gradient pass of an attack about 2.5x faster for LeNet-sized layers
    (measured), and cuDNN's tensor-core convolutions want NHWC.

    `precision` ("fp32" or "bf16", set by `accel.prepare`) runs the network under autocast;
    the normalisation before it and the logits after it are float32, so input gradients and
    losses stay float32."""

    def __init__(self, net: nn.Module, mean, std, channels_last: bool):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.channels_last = channels_last
        self.precision = "fp32"
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x):
        x = self.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = AUTOCAST_DTYPE[self.precision]
        if dtype is None:
            return self.net(x)
        with torch.autocast(x.device.type, dtype=dtype):
            logits = self.net(x)
        return logits.float()


def create(name: str, *, in_shape, num_classes: int, mean=None, std=None, **kwargs) -> nn.Module:
    s = spec(name)
    if s.kind == "classifier":
        c = in_shape[0]
        mean = tuple(mean) if mean is not None else (0.0,) * c
        std = tuple(std) if std is not None else (1.0,) * c
        if name in _REGISTRY:
            net, channels_last = s.builder(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)
        else:  # a factory: its module as it comes, channels-last when it convolves (as ours are)
            from . import factory

            if kwargs:
                raise UsageError(f"factory {name} takes no model options, got {', '.join(kwargs)}")
            net = s.builder(in_shape=tuple(in_shape), num_classes=num_classes)
            channels_last = factory.has_conv(net)
        return Classifier(net, mean, std, channels_last)
    return s.builder(in_shape=tuple(in_shape), num_classes=num_classes, **kwargs)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from . import cvae, lenet, mlp, ppca, resnet  # noqa: E402,F401  (registration)
