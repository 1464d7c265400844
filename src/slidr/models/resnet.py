"""ResNet-18 / ResNet-50 image encoders whose state_dict keys are torchvision's.

So torchvision checkpoint files (and MoCo v2 ones, once their prefix is stripped) load as they are. The
"dilated" variant of SLidR replaces the strides of stages 2-4 by dilation (torchvision's
``replace_stride_with_dilation=[True, True, True]``): features at 1/4 of the input resolution instead of 1/32.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from slidr.models import IMAGE_ENCODERS


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34); the first carries the stride.

    torchvision refuses dilation here. This block accepts it: ``dilation`` is that of the first convolution and
    ``stage_dilation`` that of the second, which (in the first block of a dilated stage) already works on the
    finer grid; then the dilated network computes exactly the strided one at every position.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, stage_dilation: int | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dilation=stage_dilation or dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, "ResNet v1.5" as torchvision) -> 1x1 with 4x expansion (ResNet-50).

    ``stage_dilation`` is unused: no 3x3 convolution follows the strided one inside the block.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, stage_dilation: int | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout: conv1, bn1, relu, maxpool, layer1..4, then (optionally) avgpool + fc.

    Parameters
    ----------
    block : BasicBlock or Bottleneck
    layers : four ints
        Blocks per stage.
    num_classes : int
        Size of the ``fc`` classifier; 0 builds none (an encoder: ``fc.*`` keys of a checkpoint are ignored).
    replace_stride_with_dilation : three bools
        For stages 2, 3 and 4: keep the resolution and dilate instead of striding (torchvision's semantics).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], num_classes: int = 0,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False)) -> None:
        super().__init__()
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation must have three entries (stages 2, 3 and 4)")
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.out_channels = 512 * block.expansion
        self.output_stride = 4 * 2 ** sum(not dilate for dilate in replace_stride_with_dilation)
        if num_classes > 0:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.out_channels, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        # the first block's strided convolution keeps the previous dilation, as torchvision does
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation, self.dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_channels, ceil(H / output_stride), ceil(W / output_stride)) feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map, or the class logits when the model has a classifier."""
        features = self.forward_features(x)
        if not hasattr(self, "fc"):
            return features
        return self.fc(torch.flatten(self.avgpool(features), 1))


@IMAGE_ENCODERS.register("resnet50", options=("dilated",))
def resnet50(dilated: bool = False, num_classes: int = 0) -> ResNet:
    """ResNet-50; ``dilated``: stages 2-4 dilated (output stride 4) instead of strided (32)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, (dilated,) * 3)


@IMAGE_ENCODERS.register("resnet18", options=("dilated",))
def resnet18(dilated: bool = False, num_classes: int = 0) -> ResNet:
    """ResNet-18; ``dilated`` as for :func:`resnet50`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, (dilated,) * 3)
