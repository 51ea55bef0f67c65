"""Batches on the training device: a split moves there once, each batch is an index gather.

Placement rule (`place`): a split goes to the CUDA device when its tensors take at most
`DEVICE_FRACTION` of the device's free memory (CIFAR-10's training split is 150 MB as uint8,
MNIST's 47 MB); otherwise it stays in pinned host memory and each batch is gathered on the
host and copied on a side stream one batch ahead. On CPU the split is used where it is.

Augmentation (pad-4 random crop + horizontal flip) is two gathers over the whole batch on its
device. Its random draws are made on the host from the epoch's generator, batch by batch in
the order the per-image loop drew them (x shifts, y shifts, flips), before the epoch starts,
and moved to the device once: the same seed gives the same images as before, without a host
round trip per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..runtime import distributed
from .datasets import Split

DEVICE_FRACTION = 0.25
PAD = 4


def nbytes(split: Split) -> int:
    return split.x.numel() * split.x.element_size() + split.y.numel() * split.y.element_size()


def place(split: Split, device, *, fraction: float = DEVICE_FRACTION) -> Split:
    """`split` where batches will be cut from (see the module docstring for the rule)."""
    device = torch.device(device)
    if device.type != "cuda":
        return split
    if split.x.device == device:
        return split
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes(split) <= fraction * free:
        return Split(split.x.to(device), split.y.to(device))
    return Split(split.x.pin_memory(), split.y.pin_memory())


@dataclass
class Crops:
    """Per-example crop offsets (0..2*PAD) and flips for a whole epoch, in data order."""

    dx: torch.Tensor
    dy: torch.Tensor
    flip: torch.Tensor

    def to(self, device) -> "Crops":
        return Crops(self.dx.to(device), self.dy.to(device), self.flip.to(device))

    def __getitem__(self, sl) -> "Crops":
        return Crops(self.dx[sl], self.dy[sl], self.flip[sl])


def draw_crops(gen: torch.Generator, n: int, batch_size: int) -> Crops:
    """The epoch's augmentation draws, batch by batch from `gen` (host)."""
    dx, dy, flip = [], [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        dx.append(torch.randint(0, 2 * PAD + 1, (b,), generator=gen))
        dy.append(torch.randint(0, 2 * PAD + 1, (b,), generator=gen))
        flip.append(torch.rand(b, generator=gen) < 0.5)
    if not dx:
        empty = torch.zeros(0, dtype=torch.int64)
        return Crops(empty, empty, empty.bool())
    return Crops(torch.cat(dx), torch.cat(dy), torch.cat(flip))


def crop_flip(x: torch.Tensor, crops: Crops) -> torch.Tensor:
    """out[i] = (flip[i] ? mirrored : identity)(pad(x[i], PAD)[:, dy[i]:dy[i]+h, dx[i]:dx[i]+w])."""
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    rows = crops.dy.view(b, 1) + torch.arange(h, device=x.device)
    cols = crops.dx.view(b, 1) + torch.arange(w, device=x.device)
    cols = torch.where(crops.flip.view(b, 1), cols.flip(1), cols)
    out = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * PAD))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def batches(split: Split, batch_size: int, device, *, order: torch.Tensor | None = None,
            crops: Crops | None = None):
    """Yields (x float32 in [0, 1], y, end) for consecutive slices of `order` (indices into the
    placed `split`; None: the split in its own order) on `device`; `end` counts the examples
    done after this batch. No host synchronisation per batch."""
    n = len(split) if order is None else len(order)
    for _, x, y, piece in _cut(split, device, order, crops, [(k, sl) for k, sl in enumerate(_slices(n, batch_size))]):
        yield x, y, piece.stop


def dealt(split: Split, batch_size: int, device, *, order: torch.Tensor | None = None):
    """Yields (batch index, x, y) for this process's whole batches: with several processes the
    batches are dealt round-robin (distributed.mine), so a batch is the same on every count."""
    n = len(split) if order is None else len(order)
    mine = [(k, sl) for k, sl in enumerate(_slices(n, batch_size)) if distributed.mine(k)]
    for k, x, y, _ in _cut(split, device, order, None, mine):
        yield k, x, y


def parts(split: Split, batch_size: int, device, *, order: torch.Tensor, crops: Crops | None = None):
    """Yields (x, y, end, (offset, size)) for this process's part of every global batch of
    `order` (distributed.part_of): `offset` is where the part starts in its batch of `size`."""
    pieces, shards = [], []
    for k, sl in enumerate(_slices(len(order), batch_size)):
        offset, length = distributed.part_of(sl.stop - sl.start)
        pieces.append((k, slice(sl.start + offset, sl.start + offset + length)))
        shards.append((offset, sl.stop - sl.start, sl.stop))
    for k, x, y, _ in _cut(split, device, order, crops, pieces):
        offset, size, end = shards[k]
        yield x, y, end, (offset, size)


def _slices(n: int, batch_size: int) -> list[slice]:
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _cut(split: Split, device, order, crops, pieces):
    """(k, x, y, piece) for each (k, piece): the examples at positions `piece` of `order`."""
    device = torch.device(device)
    if crops is not None:
        crops = crops.to(device)
    if split.x.device.type == "cpu" and device.type == "cuda":
        n = len(split) if order is None else len(order)
        source = _prefetched(split, torch.arange(n) if order is None else order, [p for _, p in pieces], device)
    else:
        source = None
        if order is not None:
            order = order.to(split.x.device)
    for k, piece in pieces:
        if source is not None:
            x, y = next(source)
        else:
            idx = piece if order is None else order[piece]
            x, y = split.images(idx), split.y[idx]
        if crops is not None:
            x = crop_flip(x, crops[piece])
        yield k, x, y, piece


def _prefetched(split: Split, order: torch.Tensor, pieces: list[slice], device):
    """Host-resident split: gather each batch into pinned memory and copy it on a side stream,
    one batch ahead of the consumer."""
    stream = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)

    def stage(piece):
        idx = order[piece]
        hx = torch.empty((len(idx), *split.x.shape[1:]), dtype=split.x.dtype, pin_memory=True)
        hy = torch.empty(len(idx), dtype=split.y.dtype, pin_memory=True)
        torch.index_select(split.x, 0, idx, out=hx)
        torch.index_select(split.y, 0, idx, out=hy)
        with torch.cuda.stream(stream):
            dx, dy = hx.to(device, non_blocking=True), hy.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return dx, dy, done

    ahead = stage(pieces[0]) if pieces else None
    for i in range(len(pieces)):
        dx, dy, done = ahead
        ahead = stage(pieces[i + 1]) if i + 1 < len(pieces) else None
        main.wait_event(done)
        dx.record_stream(main)  # allocated on the side stream, used on the main one
        dy.record_stream(main)
        yield Split(dx, dy).images(), dy
