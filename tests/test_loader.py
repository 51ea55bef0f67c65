"""Batches cut on the device: batched augmentation against the per-image definition, the same
draws as the per-batch loop had, and the order and contents of the batches."""

import pytest
import torch
import torch.nn.functional as F

from manifoldadv.data import loader
from manifoldadv.data import Split


def per_image_crop_flip(x, dx, dy, flip, pad=4):
    """The definition, one image at a time: pad, crop at (dy, dx), mirror if flip."""
    out = []
    h, w = x.shape[2:]
    for i in range(x.shape[0]):
        img = F.pad(x[i], (pad, pad, pad, pad))[:, int(dy[i]):int(dy[i]) + h, int(dx[i]):int(dx[i]) + w]
        out.append(img.flip(2) if bool(flip[i]) else img)
    return torch.stack(out)


def old_loop_batches(split, gen, batch_size):
    """The training loop's data before batches moved to the device (a per-image Python loop drawing
    its shifts and flips from the epoch generator batch by batch)."""
    n = len(split)
    perm = torch.randperm(n, generator=gen)
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        x = split.images(idx)
        b = x.shape[0]
        dx = torch.randint(0, 9, (b,), generator=gen)
        dy = torch.randint(0, 9, (b,), generator=gen)
        flip = torch.rand(b, generator=gen) < 0.5
        yield per_image_crop_flip(x, dx, dy, flip), split.y[idx]


@pytest.mark.parametrize("shape", [(37, 3, 32, 32), (5, 1, 28, 28), (1, 2, 9, 13)])
def test_crop_flip_equals_per_image_definition(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g)
    b = shape[0]
    crops = loader.Crops(torch.randint(0, 9, (b,), generator=g), torch.randint(0, 9, (b,), generator=g),
                         torch.rand(b, generator=g) < 0.5)
    want = per_image_crop_flip(x, crops.dx, crops.dy, crops.flip)
    assert torch.equal(loader.crop_flip(x, crops), want)
    # every offset and both flips occur among the draws of the larger case (the test is not vacuous)
    if b > 30:
        assert set(crops.dx.tolist()) >= {0, 8} and crops.flip.any() and (~crops.flip).any()


@pytest.mark.parametrize("uint8", [True, False])
def test_augmented_batches_equal_the_per_image_loop_for_a_seed(uint8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (203, 3, 8, 8), generator=g, dtype=torch.uint8)
    split = Split(x if uint8 else x.float() / 255, torch.randint(0, 10, (203,), generator=g))
    old = list(old_loop_batches(split, torch.Generator().manual_seed(7), 64))
    gen = torch.Generator().manual_seed(7)
    perm = torch.randperm(len(split), generator=gen)
    crops = loader.draw_crops(gen, len(split), 64)
    new = list(loader.batches(loader.place(split, "cpu"), 64, "cpu", order=perm, crops=crops))
    assert [end for _, _, end in new] == [64, 128, 192, 203]
    assert len(old) == len(new)
    for (xo, yo), (xn, yn, _) in zip(old, new):
        assert torch.equal(xo, xn) and torch.equal(yo, yn)


def test_batches_without_order_follow_the_split():
    x = torch.arange(10 * 4, dtype=torch.float32).view(10, 1, 2, 2)
    split = Split(x, torch.arange(10))
    got = list(loader.batches(split, 4, "cpu"))
    assert [end for _, _, end in got] == [4, 8, 10]
    assert torch.equal(torch.cat([y for _, y, _ in got]), torch.arange(10))
    assert torch.equal(torch.cat([xb for xb, _, _ in got]), x)
    assert list(loader.batches(Split(x[:0], torch.arange(0)), 4, "cpu")) == []


def test_place_on_cpu_is_the_split_itself():
    split = Split(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.int64))
    assert loader.place(split, "cpu") is split
    assert loader.nbytes(split) == 3 * 4 * 4 + 3 * 8
