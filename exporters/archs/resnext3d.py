"""MARS' RGB stream: 3-D ResNeXt-101 (cardinality 32) with the parameter names of craston/MARS.

Layer facts taken from the original ``models/resnext.py``: 7x7x7 stem with stride (1, 2, 2), a 3x3x3
max pool with stride 2, stages of [3, 4, 23, 3] bottlenecks with "planes" 128/256/512/1024, inner
width cardinality * planes / 32, expansion 2, projection shortcuts (type 'B'), an average pool whose
kernel is (ceil(T/16), ceil(S/32), ceil(S/32)) with stride 1, and a linear classifier on 2048
features. The bottleneck is shared with the 2-D ResNet-50 (``resnet.Bottleneck``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from exporters.archs.resnet import Bottleneck


class ResNeXt3D(nn.Module):
    def __init__(self, num_classes: int = 400, layers=(3, 4, 23, 3), cardinality: int = 32,
                 sample_size: int = 112, sample_duration: int = 16, input_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv3d(input_channels, 64, kernel_size=7, stride=(1, 2, 2), padding=3,
                               bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, count) in enumerate(zip((128, 256, 512, 1024), layers), start=1):
            width, out = cardinality * (planes // 32), planes * 2
            blocks = []
            for b in range(count):
                stride = 2 if (i > 1 and b == 0) else 1
                blocks.append(Bottleneck(3, inplanes, width, out, stride, groups=cardinality))
                inplanes = out
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        # A fixed-size pool, as in the original: for 16x112x112 clips it covers the whole 1x4x4 map.
        last_t = math.ceil(sample_duration / 16)
        last_s = math.ceil(sample_size / 32)
        self.avgpool = nn.AvgPool3d((last_t, last_s, last_s), stride=1)
        self.fc = nn.Linear(cardinality * 32 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
