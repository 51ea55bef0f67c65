"""Regular attacks replayed as CUDA graphs: a training batch's whole K-step attack (K forwards,
K input gradients, K pgd_steps) captured once and replayed as one launch.

Small batches are bound by kernel launches, not arithmetic (NOTES.md, "Speed"): one graph for
all K steps removes the return to Python between them.

What is captured is `attacks.descend` on the bare model in eval mode with frozen parameters, so a
replay computes exactly the eager attack: the random start is drawn eagerly (same generator, same
draws) and copied in, and the graph reads the live parameters and BatchNorm statistics that the
optimizer updates in place. Step size, eps and shapes are baked into a graph, so a graph is made
for an attack only when the same (spec, shape) comes a second time: while eps ramps up
(--eps-warmup) every batch's differs and the attack runs eagerly. Composites, restarts, gradient-free,
external and latent attacks always run eagerly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from ..runtime import console
from .. import ops
from ..errors import UsageError
from .loop import cross_entropy, descend, frozen, start
from .registry import AttackSpec

LO, HI = 0.0, 1.0  # regular attacks work on images in [0, 1]


def graphable(spec: AttackSpec) -> bool:
    k = spec.kind
    return (k.regular and not (k.parts or k.external or k.gradient_free)
            and spec.restarts == 1 and spec.steps >= 1)


def cuda_capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """(replay, output) of `fn` captured as a CUDA graph. Two eager runs first, on the stream the
    capture then uses, as torch.cuda.graph asks: lazy initialisation (library handles and their
    per-stream workspaces) must happen before the capture, on that stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: another thread's CUDA calls (a progress bar, a prefetch) do not break the capture
    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
        out = fn()
    return graph.replay, out


def eager_capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """The same contract without a GPU (tests): a replay reruns `fn` into the same output tensor."""
    out = fn()
    return (lambda: out.copy_(fn())), out


def require(device, mode) -> None:
    """--attack-graphs refused where it cannot work, in one line saying why."""
    device = torch.device(device)
    why = (f"mode {mode.name} trains no attack" if mode.generator else
           f"attack graphs are CUDA graphs; the device is {device.type}" if device.type != "cuda" else
           "it needs the compiled CUDA pgd_step (the reference synchronises); run make setup"
           if not ops.has_kernel("pgd_step_", "cuda") else "")
    if why:
        raise UsageError(f"--attack-graphs: {why}")


class _Graph:
    """One captured attack with its static inputs: a call copies the batch in, replays, and returns
    a copy of the output (the next replay overwrites the static one)."""

    def __init__(self, model, x0, x_start, y, spec: AttackSpec, capture):
        self.x0, self.start, self.y = x0.clone(), x_start.clone(), y.clone()
        # frozen inside the function: a CUDA graph holds the eval-mode kernels it was captured
        # with, and the CPU emulation, which reruns the function, must run them too
        self.replay, self.out = capture(lambda: descend_eagerly(model, self.x0, self.start.clone(), self.y, spec))

    def __call__(self, x0, x_start, y) -> torch.Tensor:
        self.x0.copy_(x0)
        self.start.copy_(x_start)
        self.y.copy_(y)
        self.replay()
        return self.out.clone()


class AttackGraphs:
    """The attacks of one training run against `model`, replayed from graphs where they can be:
    `run` returns the adversarial batch (eager the first time a spec and shape come, graphed from
    the second time on), or None for an attack it does not take (`perturb` runs it).
    A capture that fails turns graphs off for the rest of the run with one line, not the run.

    capture: `cuda_capture` (default) or `eager_capture` (CPU tests). max_graphs: how many
    (spec, shape) graphs are kept (a full and a last, smaller batch per attack of a mode)."""

    def __init__(self, model, *, capture=cuda_capture, max_graphs: int = 4):
        self.model, self.capture, self.max_graphs = model, capture, max_graphs
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.seen: OrderedDict[tuple, None] = OrderedDict()  # keys met recently
        self.captures = self.replays = 0
        self.off = ""  # why graphs were turned off

    def run(self, x, y, spec: AttackSpec, *, generator=None, shard=None) -> torch.Tensor | None:
        if self.off or not graphable(spec):
            return None
        key = (spec, tuple(x.shape), x.dtype, x.stride(), str(x.device), getattr(self.model, "precision", None))
        graph = self.graphs.get(key)
        repeated = key in self.seen
        self.seen[key] = None
        self.seen.move_to_end(key)
        while len(self.seen) > 16:  # keys of a ramping eps never come back
            self.seen.popitem(last=False)
        x0 = x.detach()
        x_start = start(x0, spec, LO, HI, generator, shard)  # drawn eagerly: the generator advances as in perturb
        if graph is None:
            if not repeated:
                return descend_eagerly(self.model, x0, x_start, y, spec)
            try:
                graph = self.graphs[key] = _Graph(self.model, x0, x_start, y, spec, self.capture)
            except Exception as exc:  # noqa: BLE001  (any capture failure: the eager attack still works)
                self.off = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self.graphs.clear()
                console.log(f"attack graphs off for this run, the attacks run eagerly (capture failed: {self.off})")
                return descend_eagerly(self.model, x0, x_start, y, spec)
            self.captures += 1
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        self.replays += 1
        return graph(x0, x_start, y)


def descend_eagerly(model, x0, x_start, y, spec: AttackSpec) -> torch.Tensor:
    with frozen(model):
        return descend(cross_entropy(model, y), x_start, x0, spec, LO, HI)
