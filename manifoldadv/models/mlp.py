"""A small fully connected classifier, for tests and quick experiments."""

import math

from torch import nn

from . import register


@register("mlp", description="MLP: flatten-fc(hidden)-ReLU-fc (for tests)")
def mlp(*, in_shape, num_classes, hidden: int = 128):
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    return net, False
