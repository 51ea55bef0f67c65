"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, the paper's MNIST classifier."""

from torch import nn

from . import register


@register("lenet5", description="LeNet-5: conv6-pool-conv16-pool-fc120-fc84 (61.7k params)")
def lenet5(*, in_shape, num_classes):
    c, h, w = in_shape
    pad = 2 if h == 28 else 0  # 28x28 inputs are padded to the original 32x32 geometry
    side = ((h + 2 * pad - 4) // 2 - 4) // 2
    net = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    return net, True
