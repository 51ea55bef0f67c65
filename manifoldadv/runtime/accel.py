"""How classifier forwards run: numeric precision (bf16 autocast) and torch.compile.

Both are run settings, not model properties: `prepare` returns the module to call for
forwards; its parameters, buffers and state_dict are the model's own, so checkpoints never
see a compiled wrapper. Only classifier forwards change. Attack perturbations, their
gradients, the PGD step, losses and the CVAE stay float32.

Compilation defaults (NOTES.md, "Speed"): training on CUDA compiles the model with CUDA graphs
("reduce-overhead"): small training batches are bound by kernel launches, not arithmetic, and the
compilation is repaid within an epoch. Evaluation stays eager (a PGD evaluation of a test set takes
less time than the compilation), and so does the CPU, where compiled attack steps were slower.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError

PRECISIONS = ("fp32", "bf16")
AUTOCAST_DTYPE = {"fp32": None, "bf16": torch.bfloat16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


PURPOSES = ("train", "eval")


def default_compile(device, purpose: str) -> bool:
    return torch.device(device).type == "cuda" and purpose == "train"


def compile_mode(device) -> str:
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


def resolve_compile(compile: bool | None, device, purpose: str) -> bool:
    """`compile` as given, or the default for the device and purpose ("train" or "eval")."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    return default_compile(device, purpose) if compile is None else bool(compile)


def resolve_attack_graphs(attack_graphs: bool | None, device) -> bool:
    """`attack_graphs` as given, else the default (graphed.py): off on every device until a GPU
    run of `make gpu-check` has shown them correct and faster (NOTES.md); then on for CUDA here."""
    return False if attack_graphs is None else bool(attack_graphs)


def prepare(model: nn.Module, *, precision: str = "fp32", compile: bool = False, device=None) -> nn.Module:
    """`model` set to run its forwards at `precision`; compiled when `compile` (the result is
    then torch.compile's wrapper, sharing the model's parameters and train/eval mode)."""
    precision = check_precision(precision)
    if not hasattr(model, "precision"):
        raise UsageError(f"--precision and --compile apply to classifiers, not {type(model).__name__}")
    model.precision = precision
    if not compile:
        return model
    device = device if device is not None else next(model.parameters()).device
    return torch.compile(model, mode=compile_mode(device))


def mark_step(net: nn.Module) -> None:
    """Tell CUDA-graph trees that a new training iteration begins (no earlier graph output is
    read after this), so each replay may reuse the graphs' memory."""
    if isinstance(net, torch._dynamo.eval_frame.OptimizedModule) and torch.cuda.is_available():
        torch.compiler.cudagraph_mark_step_begin()


def record(precision: str, compile: bool) -> dict:
    """What results and checkpoints store about how forwards ran."""
    return {"precision": precision, "compile": bool(compile)}
