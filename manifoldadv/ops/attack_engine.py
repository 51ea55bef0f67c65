"""The fused attack engine: `fused_attack` (K regular attack steps on a small convolutional
network in one CPU op) and `attack_input_grad`, with their pure-PyTorch reference, the oracle
the kernel is tested against and the fallback.

The network is given as data: `layers`, a list of (code, argument) pairs from `LAYERS`, and
`params`, the tensors the layers take in order, applied to float32 images [B, C, H, W]:

- ``normalize``: (x - mean[c]) / std[c]; params mean [C], std [C];
- ``conv``: Conv2d with stride 1 and zero padding = argument; params weight [O, C, k, k], bias [O];
- ``relu``; ``maxpool2``: MaxPool2d(2) (floor mode); ``flatten``: to [B, C*H*W], row-major;
- ``linear``: params weight [O, F], bias [O] (after a flatten). The output is the logits.

``fused_attack(x0, y, x, params, layers, steps, step, eps, norm, lo, hi, l1_quantile, logits)``
runs `steps` times ``g = d/dx sum_i CE(net(x)_i, y_i); x = pgd_step(x, x0, g, ...)`` from the
start x (exactly `attacks.loop.descend`: the same step kernel on the same kind of gradient) and
returns (x, the logits at x when `logits`, else an empty [0, classes]).
``attack_input_grad(x, y, params, layers)`` returns (logits, g) at x.

The CPU kernel (csrc/attack_engine_*.{h,cpp}) puts one image in each float lane of a tile of 8:
each image's arithmetic is the same whatever the batch, its order and the thread count. Its
float32 sums run in another order than torch's convolutions, so gradients agree with autograd's
to rounding (tests: 1e-4 relative), not bit for bit. There is no CUDA kernel: on CUDA the
callers keep their eager path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .extension import has_kernel
from .pgd import _check_step_args, pgd_step_reference

LAYERS = {"normalize": 0, "conv": 1, "relu": 2, "maxpool2": 3, "flatten": 4, "linear": 5}
_NAMES = {v: k for k, v in LAYERS.items()}
_TAKES = {"normalize": 2, "conv": 2, "linear": 2}


def pairs(layers) -> list[tuple[str, int]]:
    layers = list(layers)
    if len(layers) % 2 or not layers:
        raise ValueError(f"layers must be a non-empty list of (code, argument) pairs, got {len(layers)} numbers")
    out = []
    for code, arg in zip(layers[::2], layers[1::2]):
        if code not in _NAMES:
            raise ValueError(f"unknown layer code {code}")
        out.append((_NAMES[code], int(arg)))
    return out


def network(params, layers):
    """The network as a function of images (the reference forward)."""
    plan = pairs(layers)

    def forward(x):
        i = 0
        for name, arg in plan:
            if name == "normalize":
                m, s = params[i], params[i + 1]
                x = (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)
            elif name == "conv":
                x = F.conv2d(x, params[i], params[i + 1], padding=arg)
            elif name == "relu":
                x = F.relu(x)
            elif name == "maxpool2":
                x = F.max_pool2d(x, 2)
            elif name == "flatten":
                x = x.flatten(1)
            else:
                x = F.linear(x, params[i], params[i + 1])
            i += _TAKES.get(name, 0)
        return x

    return forward


def output_width(x_shape, params, layers) -> int:
    """The logits' width, from the shapes alone (the fake kernels)."""
    c, h, w = x_shape[1:]
    i = 0
    for name, arg in pairs(layers):
        if name == "conv":
            k = params[i].shape[-1]
            c, h, w = params[i].shape[0], h + 2 * arg - k + 1, w + 2 * arg - k + 1
        elif name == "maxpool2":
            h, w = h // 2, w // 2
        elif name == "flatten":
            c, h, w = c * h * w, 1, 1
        elif name == "linear":
            c = params[i].shape[0]
        i += _TAKES.get(name, 0)
    return int(c)


def attack_input_grad_reference(x, y, params, layers):
    """(logits, d/dx sum_i CE) by autograd."""
    net = network(params, layers)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net(x)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    return logits.detach(), g


def fused_attack_reference(x0, y, x, params, layers, steps, step, eps, norm, lo, hi, l1_quantile, logits):
    """The PyTorch reference of `fused_attack` (same arguments and results)."""
    _check_step_args(x, x0, x, step, eps, norm, lo, hi, l1_quantile)
    x = x.detach().clone()
    for _ in range(steps):
        _, g = attack_input_grad_reference(x, y, params, layers)
        x = pgd_step_reference(x, x0, g, step=step, eps=eps, norm=norm, lo=lo, hi=hi, l1_quantile=l1_quantile)
    if logits:
        with torch.no_grad():
            return x, network(params, layers)(x)
    return x, x.new_empty(0, output_width(x.shape, params, layers))


def compiled() -> bool:
    """Whether this build has the CPU kernel."""
    return has_kernel("fused_attack", "cpu")


def fused_attack(x0, y, x, params, layers, steps, step, eps, norm, lo, hi, l1_quantile, logits):
    """The compiled engine on CPU tensors, else the reference."""
    if compiled() and x.device.type == "cpu":
        return torch.ops.manifoldadv.fused_attack.default(
            x0, y, x, list(params), list(layers), int(steps), float(step), float(eps), norm, float(lo),
            float(hi), float(l1_quantile), bool(logits))
    return fused_attack_reference(x0, y, x, params, layers, steps, step, eps, norm, lo, hi, l1_quantile, logits)


def attack_input_grad(x, y, params, layers):
    if compiled() and x.device.type == "cpu":
        return torch.ops.manifoldadv.attack_input_grad.default(x, y, list(params), list(layers))
    return attack_input_grad_reference(x, y, params, layers)


def register_fakes():
    """Shape-only kernels for torch.compile / FakeTensor / opcheck (called once the op exists)."""

    @torch.library.register_fake("manifoldadv::fused_attack")
    def _fused_attack_fake(x0, y, x, params, layers, steps, step, eps, norm, lo, hi, l1_quantile, logits):
        torch._check(x.dim() == 4, lambda: "fused_attack: x must be [B, C, H, W]")
        width = output_width(x.shape, params, layers)
        return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
            x.shape[0] if logits else 0, width)

    @torch.library.register_fake("manifoldadv::attack_input_grad")
    def _attack_input_grad_fake(x, y, params, layers):
        width = output_width(x.shape, params, layers)
        return x.new_empty(x.shape[0], width), torch.empty_like(x, memory_format=torch.contiguous_format)


__all__ = ["LAYERS", "attack_input_grad", "attack_input_grad_reference", "compiled", "fused_attack",
           "fused_attack_reference", "network", "output_width", "pairs"]
