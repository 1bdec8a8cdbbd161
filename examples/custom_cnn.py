"""A user-defined CNN for 64x64 RGB images (EuroSAT), written the way a user would write it.

It holds every kind of channel coupling a structured pruner must follow: a residual addition,
a channel concatenation, a depthwise convolution, a grouped (not depthwise) convolution with
``groups=4``, BatchNorm after every convolution and a Linear head.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CustomNet", "build_net"]


def _conv_bn(c_in: int, c_out: int, kernel: int, *, stride: int = 1, groups: int = 1
             ) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CustomNet(nn.Module):
    """stem -> residual block -> downsample -> grouped conv -> two concatenated branches ->
    depthwise -> pointwise -> global average pool -> Linear."""

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(in_channels, w, 3, stride=2)  # 64 -> 32
        self.res_conv1 = _conv_bn(w, w, 3)
        self.res_conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.res_bn2 = nn.BatchNorm2d(w)
        self.down = _conv_bn(w, 2 * w, 3, stride=2)  # 32 -> 16
        self.grouped = _conv_bn(2 * w, 4 * w, 3, groups=4)
        self.branch_a = _conv_bn(4 * w, w, 1)
        self.branch_b = _conv_bn(4 * w, w, 3)
        self.depthwise = _conv_bn(2 * w, 2 * w, 3, stride=2, groups=2 * w)  # 16 -> 8
        self.pointwise = _conv_bn(2 * w, 4 * w, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.res_bn2(self.res_conv2(self.res_conv1(x))))
        x = self.grouped(self.down(x))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pointwise(self.depthwise(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def build_net(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> nn.Module:
    """The example CNN (about 28k parameters at ``width=16``), randomly initialised."""
    return CustomNet(num_classes, width, in_channels)
