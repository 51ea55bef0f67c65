"""Models from a Python factory `package.module:function` (importable from the current directory or
the installed environment) that returns an `nn.Module` mapping images to logits.

The function is called with the keywords it names among `in_shape` (C, H, W) and `num_classes`, so
one factory serves any data set. A factory is only ever imported because the user named it on the
command line; a checkpoint's metadata never makes us import anything.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys

from torch import nn

from ..errors import UsageError

_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_factory(text) -> bool:
    return isinstance(text, str) and bool(_SPEC.match(text))


def resolve(spec: str):
    """The factory function named `package.module:function`."""
    if not is_factory(spec):
        raise UsageError(f"{spec!r} is not a factory (package.module:function)")
    module_name, attr = spec.split(":")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # importable from the current directory, as `python -m` would find it
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises while importing
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        raise UsageError(f"factory {spec}: cannot import module {module_name} ({why}); it must be importable "
                         f"from the current directory or the installed environment") from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise UsageError(f"factory {spec}: module {module_name} has no {attr}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UsageError(f"factory {spec}: {attr} is not callable")
    return fn


def build(spec: str, *, in_shape=None, num_classes=None) -> nn.Module:
    """Call the factory (with in_shape and num_classes if it takes them) and check it gave a module."""
    fn = resolve(spec)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    kw = {k: v for k, v in (("in_shape", tuple(in_shape) if in_shape else None), ("num_classes", num_classes))
          if v is not None and k in params}
    try:
        model = fn(**kw)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"factory {spec} failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
