"""A torchvision-compatible ResNet-50, so published torchvision-format weights load with ``strict=True``.

torchvision is not a dependency of the library, yet every self-supervised ResNet-50 release (MoCo v2, SwAV,
DINO, OBoW, DenseCL) is stored with torchvision's module names. This module rebuilds exactly that layout
(``conv1, bn1, relu, maxpool, layer1..layer4`` of ``Bottleneck`` blocks, optional ``fc``) including
``replace_stride_with_dilation``, which SLidR uses to keep the output stride at 4 ("dilated" form) while PPKT
keeps the plain stride-32 network ("strided" form).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lidar_ssl_core.errors import ConfigError

#: Channels of the last feature map of ResNet-50 (E in the SLidR paper).
RESNET50_OUT_CHANNELS = 2048
#: Blocks per stage of ResNet-50.
RESNET50_LAYERS = (3, 4, 6, 3)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: the stride (or dilation) sits on the 3x3 conv."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)  # type: ignore[no-any-return]


class ResNet(nn.Module):
    """torchvision-layout ResNet whose ``forward`` returns the last feature map (no pooling, no fc).

    ``include_fc=True`` adds ``avgpool``/``fc`` so full ImageNet classifiers load strictly; the feature
    path never uses them (``logits`` does).
    """

    def __init__(
        self,
        layers: Sequence[int] = RESNET50_LAYERS,
        *,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
        include_fc: bool = False,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ConfigError(f"ResNet needs 4 stage depths, got {list(layers)}")
        if len(replace_stride_with_dilation) != 3:
            raise ConfigError(
                "replace_stride_with_dilation needs 3 booleans (layer2, layer3, layer4), "
                f"got {list(replace_stride_with_dilation)}"
            )
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.out_channels = 512 * Bottleneck.expansion
        #: Total down-sampling of ``forward`` (32 plain, 4 with all three stages dilated).
        self.output_stride = 4 * 2 ** sum(1 for d in replace_stride_with_dilation if not d)
        self.include_fc = include_fc
        if include_fc:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.out_channels, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        downsample: nn.Module | None = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        blocks_list: list[nn.Module] = [
            Bottleneck(self.inplanes, planes, stride, downsample, dilation=previous_dilation)
        ]
        self.inplanes = planes * Bottleneck.expansion
        blocks_list.extend(
            Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)
        )
        return nn.Sequential(*blocks_list)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised image -> (B, 2048, ~H/stride, ~W/stride) feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)  # type: ignore[no-any-return]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits; only for models built with ``include_fc=True`` (sanity checks of weights)."""
        if not self.include_fc:
            raise ConfigError("this ResNet was built with include_fc=False; it has no classifier")
        return self.fc(torch.flatten(self.avgpool(self.forward(x)), 1))  # type: ignore[no-any-return]


def resnet50(*, dilated: bool = False, include_fc: bool = False) -> ResNet:
    """ResNet-50; ``dilated=True`` replaces the strides of layer2..4 by dilation (output stride 4, SLidR)."""
    return ResNet(
        RESNET50_LAYERS,
        replace_stride_with_dilation=(dilated, dilated, dilated),
        include_fc=include_fc,
    )
