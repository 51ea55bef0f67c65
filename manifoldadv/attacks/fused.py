"""When a regular attack runs on the fused engine (`ops.attack_engine`), and how.

`perturb` asks `runner(model, x, spec)`: a model qualifies when it is a `Classifier` computing
in float32 on the CPU whose network is a plain `nn.Sequential` of stride-1 `Conv2d` (zero
padding), `ReLU`, `MaxPool2d(2)`, `Flatten` and `Linear`, with no hooks anywhere (a hook could
change what the network computes, and the engine would not call it); the attack qualifies when it
is a gradient attack in input space that the engine implements (`ATTACKS`). Anything else, or
MANIFOLDADV_FUSED_ATTACK=0, or a build without the kernel, keeps the eager path, which computes
the same steps (tests/test_attack_engine.py). The engine reads the live parameters on each call,
so adversarial training gets it through the same call.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import attack_engine
from ..ops.extension import use_kernel
from .registry import KINDS, AttackSpec

ENV = "MANIFOLDADV_FUSED_ATTACK"

# the attacks the engine implements: gradient steps in input space with a pgd_step norm
ATTACKS = tuple(n for n, k in KINDS.items()
                if k.regular and not (k.parts or k.external or k.gradient_free) and k.norm in ("linf", "l2", "l1"))


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip() not in ("0", "false", "off", "no")


def _hooked(module: nn.Module) -> bool:
    if any(getattr(nn.modules.module, g) for g in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or
               getattr(m, "_backward_pre_hooks", None) for m in module.modules())


def plan(model: nn.Module) -> tuple[list[torch.Tensor], list[int]] | str:
    """(params, layers) of `model` for the engine, or why it does not qualify."""
    from ..models import Classifier  # models import this package's registry: import late

    if type(model) is not Classifier:
        return f"not a manifoldadv Classifier ({type(model).__name__})"
    if model.precision != "fp32":
        return f"runs in {model.precision}"
    net = model.net
    if type(net) is not nn.Sequential:
        return f"its network is a {type(net).__name__}, not an nn.Sequential"
    if _hooked(model):
        return "it has hooks"
    tensors = list(model.parameters()) + list(model.buffers())
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return "its parameters are not float32 on the CPU"
    params = [model.normalize.mean.reshape(-1), model.normalize.std.reshape(-1)]
    layers = [attack_engine.LAYERS["normalize"], 0]
    for i, m in enumerate(net):
        t = type(m)
        if t is nn.Conv2d:
            pad = {"valid": (0, 0)}.get(m.padding) if isinstance(m.padding, str) else m.padding
            k = m.kernel_size
            if not (m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
                    and pad is not None and pad[0] == pad[1] and k[0] == k[1]):
                return f"layer {i} is a Conv2d the engine does not run (stride 1, square kernel, even zero padding)"
            bias = m.bias if m.bias is not None else torch.zeros(m.out_channels)
            params += [m.weight.detach(), bias.detach()]
            layers += [attack_engine.LAYERS["conv"], int(pad[0])]
        elif t is nn.Linear:
            bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
            params += [m.weight.detach(), bias.detach()]
            layers += [attack_engine.LAYERS["linear"], 0]
        elif t is nn.ReLU:
            layers += [attack_engine.LAYERS["relu"], 0]
        elif t is nn.MaxPool2d and _pool2(m):
            layers += [attack_engine.LAYERS["maxpool2"], 0]
        elif t is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            layers += [attack_engine.LAYERS["flatten"], 0]
        else:
            return f"layer {i} ({t.__name__}) is not one the engine runs"
    if attack_engine.LAYERS["flatten"] not in layers[::2]:
        return "its network does not end in a flatten and linear layers"
    return params, layers


def _pool2(m: nn.MaxPool2d) -> bool:
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    stride = m.stride if m.stride is not None else m.kernel_size
    return (pair(m.kernel_size) == (2, 2) and pair(stride) == (2, 2) and pair(m.padding) == (0, 0)
            and pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices)


def why_not(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec) -> str | None:
    """None when (model, x, y, spec) runs fused, else the reason."""
    p = _qualify(model, x, y, spec)
    return p if isinstance(p, str) else None


def _qualify(model, x, y, spec):
    """plan(model) when (model, x, y, spec) runs fused, else the reason."""
    if not enabled():
        return f"{ENV}=0"
    if spec.name not in ATTACKS:
        return f"the engine does not implement {spec.name}"
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return "the images are not float32 [B, C, H, W] on the CPU"
    if y.dtype != torch.long or y.device.type != "cpu":
        return "the labels are not int64 on the CPU"
    if not use_kernel("fused_attack", "cpu"):
        return "this build has no attack engine"
    return plan(model)


def runner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, lo: float, hi: float):
    """A function start -> (x', loss, fooled) running spec's steps on the engine (loss and fooled
    at x', only when asked for), or None when the attack keeps the eager path."""
    p = _qualify(model, x, y, spec)
    if isinstance(p, str):
        return None
    params, layers = p
    x0 = x.detach().contiguous()

    def run(x_start: torch.Tensor, final: bool):
        x_adv, logits = attack_engine.fused_attack(
            x0, y, x_start, params, layers, spec.steps, spec.step_size, spec.eps, spec.norm, lo, hi,
            spec.l1_quantile, final)
        if not final:
            return x_adv, None, None
        return x_adv, F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y

    return run


def status() -> dict:
    """For `info`: whether the engine is on, its kernel, and the attacks it runs."""
    kernel = attack_engine.compiled()
    return {"enabled": enabled(), "env": ENV, "compiled": kernel,
            "attacks": list(ATTACKS) if kernel and enabled() else [],
            "models": "Classifier(nn.Sequential of Conv2d stride 1, ReLU, MaxPool2d(2), Flatten, Linear), "
                      "float32, CPU, no hooks"}
