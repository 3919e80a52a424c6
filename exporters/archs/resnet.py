"""Residual networks with the parameter names of the published smoothing checkpoints.

Written for this project from the layer facts of the originals (names, widths, strides, pooling):
  * Cohen et al.'s CIFAR ResNet (locuslab/smoothing ``archs/cifar_resnet.py``), also used by
    Salman et al. for ``cifar_resnet110`` and ``imagenet32_resnet110``;
  * torchvision's ImageNet ResNet-50 layout (stride on the 3x3 convolution of the bottleneck);
  * the bottleneck is written once for 2-D and 3-D convolutions with an optional group count, so the
    3-D ResNeXt of MARS (``resnext3d.py``) reuses it instead of carrying a near-copy.

Only the *names* of sub-modules matter for loading a state dict, so every attribute here is named
exactly as in the originals (``conv1``, ``bn1``, ``layer3.17.conv2``, ``downsample.0`` ...), and no
module that holds tensors is added anywhere else.
"""

from __future__ import annotations

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def shortcut(dims: int, inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    """Projection shortcut (type 'B' in MARS' words) where the shape changes, identity otherwise."""
    if stride == 1 and inplanes == outplanes:
        return None
    # Named children "0" and "1" so the keys read downsample.0.weight / downsample.1.running_mean.
    return nn.Sequential(
        _CONV[dims](inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
        _BN[dims](outplanes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual connection (CIFAR ResNet-20/110)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(2, inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, carrying the stride), 1x1 expand, residual.

    ``dims`` picks 2-D (ResNet-50) or 3-D (MARS ResNeXt-101) layers; ``width`` is the inner channel
    count and ``outplanes`` the block output, so both networks' widths are passed in, not derived.
    """

    def __init__(self, dims: int, inplanes: int, width: int, outplanes: int,
                 stride: int = 1, groups: int = 1):
        super().__init__()
        conv, bn = _CONV[dims], _BN[dims]
        self.conv1 = conv(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = bn(width)
        self.conv2 = conv(width, width, kernel_size=3, stride=stride, padding=1,
                          groups=groups, bias=False)
        self.bn2 = bn(width)
        self.conv3 = conv(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = bn(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = shortcut(dims, inplanes, outplanes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3 stages of (depth-2)/6 basic blocks, widths 16/32/64, AvgPool(8).

    The fixed 8x8 average pool (not a global pool) is kept because that is what the checkpoints were
    trained and evaluated with; the exported graph therefore only accepts 32x32 inputs.
    """

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(inplanes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


class ImageNetResNet50(nn.Module):
    """ResNet-50 with torchvision's parameter names: 7x7 stem, max pool, bottlenecks [3, 4, 6, 3]."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, count, stride) in enumerate(
                ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            blocks = []
            for b in range(count):
                blocks.append(Bottleneck(2, inplanes, planes, planes * 4, stride if b == 0 else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
