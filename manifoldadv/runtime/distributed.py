"""Several processes (`torchrun --nproc-per-node N -m manifoldadv ...`): one process group,
NCCL on CUDA and gloo on CPU, ranks on the GPU of their LOCAL_RANK (with gloo asked for on CUDA,
processes may share GPUs: bench/gpu_check.py runs 2 on one). A plain run is a group of one.

The rules that make N processes compute what one computes:
- training splits each global batch of the one seeded order over the ranks (`part_of`); every
  random draw of an attack is made for the global batch and sliced (`attacks`, `shard`);
- evaluation gives each rank whole batches (`mine`), each with a generator seeded by its index;
- rank 0 alone writes files; every rank waits for the write (outputs.py), so any rank can read it;
- a rank that stops ends the others: torchrun's SIGTERM, or a broken collective, becomes
  `PeerLost`, reported as one line by the CLI.
"""

from __future__ import annotations

import datetime
import os
import signal

import torch
import torch.distributed as dist

from ..errors import ManifoldError

TIMEOUT_ENV = "MANIFOLDADV_DIST_TIMEOUT"  # seconds a collective waits for a silent peer (default 300)
BACKEND_ENV = "MANIFOLDADV_DIST_BACKEND"  # nccl or gloo (default: nccl on CUDA, gloo on CPU)


class PeerLost(KeyboardInterrupt):
    """Another process of the run stopped (killed, crashed, or its collective broke). A
    KeyboardInterrupt, so that it unwinds like Ctrl-C and says what is kept."""


class DistributedError(ManifoldError):
    """The process group could not start."""


def launched() -> bool:
    """Started by torchrun (or any launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def start(device: torch.device) -> torch.device:
    """Join the process group when launched with several processes; returns this rank's device
    (cuda:LOCAL_RANK for CUDA). A plain run returns `device` unchanged."""
    if not launched() or active():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("nccl", "gloo"):
        raise DistributedError(f"{BACKEND_ENV}={backend}: choose nccl or gloo")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count and backend == "nccl":  # NCCL takes one GPU per process
            raise DistributedError(f"process {local} of this machine has no GPU of its own ({count} visible): "
                                   f"run at most {count} per machine (or set {BACKEND_ENV}=gloo to share them)")
        device = torch.device("cuda", local % count)
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "300")))
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot join the process group: {str(exc).splitlines()[0]}") from None
    signal.signal(signal.SIGTERM, _peer_stopped)  # torchrun's answer to a rank that died
    return device


def stop() -> None:
    """Leave the process group. At exit an undestroyed gloo group can abort the process
    ("terminate called without an active exception") after its work is done."""
    if active():
        try:
            dist.destroy_process_group()
        except RuntimeError:  # a peer already gone: nothing left to tidy
            pass


def _peer_stopped(signum, frame):
    raise PeerLost()


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # gloo / NCCL: a peer closed its connection or timed out
        raise PeerLost(str(exc).splitlines()[0]) from None


def barrier() -> None:
    if active():
        _collective(dist.barrier)


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, in place (float64 and int64 sums travel on the tensor's device)."""
    if active():
        _collective(dist.all_reduce, t)
    return t


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (same shape on every rank), in rank order."""
    if not active():
        return [t]
    if t.is_cuda and dist.get_backend() == "gloo":  # gloo gathers host tensors only
        return [g.to(t.device) for g in all_gather(t.cpu())]
    out = [torch.empty_like(t) for _ in range(world())]
    _collective(dist.all_gather, out, t.contiguous())
    return out


def part_of(size: int) -> tuple[int, int]:
    """(offset, length) of this rank's part of a global batch of `size` examples: the first
    size % world ranks take one more (torch.tensor_split's split)."""
    base, extra = divmod(size, world())
    r = rank()
    return r * base + min(r, extra), base + (1 if r < extra else 0)


def draw(fn, shape, shard=None, **kwargs) -> torch.Tensor:
    """fn(shape, **kwargs) (torch.rand, torch.randn) for this process's rows: with shard =
    (offset, size) drawn for all `size` rows of the global batch and sliced, as one process
    draws it."""
    if shard is None:
        return fn(tuple(shape), **kwargs)
    return fn((shard[1], *shape[1:]), **kwargs)[shard[0]:shard[0] + shape[0]]


def mine(index: int) -> bool:
    """Whether evaluation batch `index` is this rank's (batches are dealt round-robin)."""
    return index % world() == rank()
