"""ResNet-32 for CIFAR (He et al. 2016, section 4.2): 3 stages x 5 basic blocks, 16/32/64
channels, identity shortcuts with zero-padded channels where the shape changes (option A),
about 0.46M parameters."""

import torch.nn.functional as F
from torch import nn

from . import register


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x):
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, in_channels, num_classes, blocks_per_stage, widths=(16, 32, 64)):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("resnet32", description="ResNet-32 (CIFAR variant, 3x5 basic blocks, 16/32/64 ch, 0.46M params)")
def resnet32(*, in_shape, num_classes):
    return CifarResNet(in_shape[0], num_classes, 5), True


@register("resnet20", description="ResNet-20 (CIFAR variant, 3x3 basic blocks, 0.27M params)")
def resnet20(*, in_shape, num_classes):
    return CifarResNet(in_shape[0], num_classes, 3), True
