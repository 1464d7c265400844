"""One configuration system: typed dataclasses, loaded from YAML, overridable by dotted paths, validated on load.

Every setting of every command lives in one of the dataclasses below. A YAML file gives any subset of the
fields; the command line overrides single fields with ``dotted.path=value`` (the value is parsed as YAML, so
``trainer.epochs=3``, ``data.image_size=[224,416]`` and ``image.weights=null`` all work). Unknown keys, wrong
types and out-of-range values raise :class:`ConfigError` naming the key and, for unknown keys, the valid ones.

The files in ``configs/`` reproduce the paper's settings by name, e.g. ``configs/pretrain/slidr_minkunet.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar

import yaml

from slidr.errors import SlidrError

T = TypeVar("T")

NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)


class ConfigError(SlidrError, ValueError):
    """A configuration file or override is invalid; the message names the key and what is wrong."""


# --------------------------------------------------------------------------------------------------------------
# Settings. Defaults are the paper's (SLidR, CVPR 2022, supplementary C/D and the authors' published configs).
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VoxelConfig:
    """Voxelization of a scan.

    cylindrical: (rho / size, azimuth / azimuth_step_deg, z / size); cartesian: (x, y, z) / size.
    """

    mode: Literal["cylindrical", "cartesian"] = "cylindrical"
    size: float = 0.1
    azimuth_step_deg: float = 1.0

    def validate(self, where: str) -> None:
        _positive(self.size, f"{where}.size")
        _positive(self.azimuth_step_deg, f"{where}.azimuth_step_deg")


@dataclass
class AugmentConfig:
    """Paired point-cloud and image augmentations (supplementary B). ``enabled: false`` gives validation mode."""

    enabled: bool = True
    rotate_z: bool = True
    flip_prob: float = 0.5
    drop_cuboid: bool = True
    cuboid_max_fraction: float = 0.1
    image_hflip_prob: float = 0.5
    crop_min_area: float = 0.3
    crop_aspect_range: list[float] = field(default_factory=lambda: [14 / 9, 17 / 9])
    min_pairs: int = 1024
    min_pair_fraction: float = 0.75
    max_tries: int = 10

    def validate(self, where: str) -> None:
        for name in ("flip_prob", "image_hflip_prob", "crop_min_area", "cuboid_max_fraction", "min_pair_fraction"):
            _in_unit_interval(getattr(self, name), f"{where}.{name}")
        _positive(self.max_tries, f"{where}.max_tries")
        if len(self.crop_aspect_range) != 2 or self.crop_aspect_range[0] > self.crop_aspect_range[1]:
            raise ConfigError(f"{where}.crop_aspect_range must be [low, high] with low <= high")


@dataclass
class SuperpixelConfig:
    """Which precomputed superpixels to use (``slidr superpixels`` writes them)."""

    method: Literal["slic", "fh", "none"] = "slic"
    n_segments: int = 150
    root: Optional[str] = None  # default: <index folder>/superpixels


@dataclass
class DataConfig:
    """Where the data is and how a sample is turned into tensors."""

    dataset: Literal["nuscenes", "semantickitti"] = "nuscenes"
    index: str = "data/synth/index.json"
    train_split: str = "train"
    val_split: str = "val"
    label_fraction: float = 1.0
    cameras: list[str] = field(default_factory=lambda: list(NUSCENES_CAMERAS))
    image_size: list[int] = field(default_factory=lambda: [224, 416])  # (height, width) after crop
    num_workers: int = 0
    voxel: VoxelConfig = field(default_factory=VoxelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)

    def validate(self, where: str) -> None:
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"{where}.label_fraction must be in (0, 1], got {self.label_fraction}")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ConfigError(f"{where}.image_size must be [height, width], each >= 32, got {self.image_size}")
        if self.num_workers < 0:
            raise ConfigError(f"{where}.num_workers must be >= 0")


@dataclass
class BackboneConfig:
    """The 3D sparse U-Net."""

    name: Literal["minkunet34", "minkunet18", "minkunet14", "minkunet34_half", "minkunet14_half"] = "minkunet34"
    in_channels: int = 1
    out_channels: int = 64
    bn_momentum: float = 0.05
    normalize_output: bool = True
    backend: Literal["torch", "spconv"] = "torch"


@dataclass
class ImageModelConfig:
    """The frozen image teacher and its trainable head."""

    encoder: Literal["resnet50", "resnet18", "vit_small", "convnet_small", "efficientnet_lite0", "efficientnet_lite1",
                     "efficientnet_lite2"] = "resnet50"
    dilated: bool = True  # SLidR: strides of the last three stages replaced by dilation; PPKT: False
    # local checkpoint file, or package:<name> for weights shipped by an installed package (package:efficientnet-lite0);
    # None = random init (a warning says so)
    weights: Optional[str] = None
    weights_prefix: Optional[str] = None  # prefix stripped from checkpoint keys, e.g. "module.encoder_q."
    out_channels: int = 64
    normalize_output: bool = True
    freeze_encoder: bool = True
    # EfficientNet-Lite only: stages whose outputs are the dense features, named by their stride in the plain network
    # (2, 4, 8, 16, 32), concatenated at the finest one's resolution; None = the encoder's default ([8, 16])
    feature_stages: Optional[list[int]] = None
    output_stride: Optional[int] = None  # EfficientNet-Lite only: strides past this become dilation; None = none


@dataclass
class LossConfig:
    """Contrastive loss settings shared by the pretraining methods."""

    temperature: float = 0.07
    use_superpixels: bool = True  # False: every pixel is its own superpixel ("no superpixels" ablation)
    renormalize_means: bool = False  # the authors' release averages normalised features without re-normalising
    num_matches: int = 4096  # PPKT / PointContrast: random subset of pairs per batch
    gather_negatives: bool = False  # DDP: gather negatives across processes (release: per-GPU loss)
    queue_size: int = 60000  # DepthContrast
    momentum: float = 0.999  # DepthContrast key encoders
    embedding_dim: int = 128  # DepthContrast: size of the global (pooled) embeddings

    def validate(self, where: str) -> None:
        _positive(self.temperature, f"{where}.temperature")
        _positive(self.num_matches, f"{where}.num_matches")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.5
    lr_head: Optional[float] = None  # downstream fine-tuning: separate learning rate of the classifier
    momentum: float = 0.9
    dampening: float = 0.1
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "constant"] = "cosine"
    min_lr: float = 0.0

    def validate(self, where: str) -> None:
        _positive(self.lr, f"{where}.lr")


@dataclass
class TrainerConfig:
    """How training runs: epochs, batch, devices, checkpoints, logging."""

    epochs: int = 50
    max_steps: int = -1  # -1: derived from epochs
    batch_size: int = 16
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # "16-mixed" / "bf16-mixed" on GPU
    seed: int = 0
    keep_checkpoints: int = 1
    log_every_n_steps: int = 10
    num_threads: Optional[int] = None  # CPU threads per process; None = torch default
    limit_train_batches: Optional[float] = None

    def validate(self, where: str) -> None:
        _positive(self.epochs, f"{where}.epochs")
        _positive(self.batch_size, f"{where}.batch_size")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"{where}.keep_checkpoints must be >= 0")


@dataclass
class ScanPairConfig:
    """PointContrast pairs of keyframes and DepthContrast views (``slidr.data.scan_pairs``)."""

    min_distance: float = 10.0  # PointContrast: pairs whose lidars are closer than this (m) are dropped
    min_matches: int = 1024  # PointContrast: pairs with fewer matched points are dropped
    match_radius: float = 0.1  # a match: nearest neighbour in the other registered cloud closer than this (m)
    max_points: int = 20000  # DepthContrast: points fed to the point network (random subset per view)
    equivalent_epochs: Optional[int] = 50  # PointContrast: steps = as many clouds as SLidR sees in these epochs
    cache: Optional[str] = None  # PointContrast: JSON file caching the selected pairs (default: beside the index)

    def validate(self, where: str) -> None:
        _positive(self.min_matches, f"{where}.min_matches")
        _positive(self.match_radius, f"{where}.match_radius")
        _positive(self.max_points, f"{where}.max_points")
        if self.min_distance < 0:
            raise ConfigError(f"{where}.min_distance must be >= 0")


@dataclass
class PretrainConfig:
    """``slidr pretrain``: self-supervised pretraining of the 3D backbone."""

    method: Literal["slidr", "ppkt", "pointcontrast", "depthcontrast"] = "slidr"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image: ImageModelConfig = field(default_factory=ImageModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pairs: ScanPairConfig = field(default_factory=ScanPairConfig)


@dataclass
class DownstreamConfig:
    """``slidr probe`` / ``slidr finetune``: semantic segmentation on top of a (pretrained) backbone."""

    mode: Literal["probe", "finetune"] = "probe"
    pretrained: Optional[str] = None  # exported pretraining file or state dict; None = random init
    lovasz: bool = True
    lr_random_init: float = 0.05  # fine-tuning from random init: one learning rate for all (authors' config)
    cache_features: bool = True  # probe without augmentation: compute the frozen features once
    # probe: standardise the frozen features with training statistics before the classifier (MAE's linear-probe
    # practice), folded into ``final`` afterwards; false = the authors' plain linear layer on raw features
    standardize_features: bool = True
    data: DataConfig = field(default_factory=lambda: DataConfig(augment=AugmentConfig(enabled=False)))
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(normalize_output=False))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.05))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class DemoConfig:
    """``slidr demo``: the end-to-end run on the embedded synthetic world (configs/demo/demo.yaml).

    Config file paths are relative to the folder of the demo config file.
    """

    world: str = "data/synth-demo"  # generated (and indexed, superpixels computed) on first use, reused after
    scenes: int = 10
    frames: int = 10
    image_size: list[int] = field(default_factory=lambda: [480, 270])  # (width, height) of the generated images
    seed: int = 0
    workers: int = 2  # world generation and superpixels
    pretrain: dict = field(default_factory=lambda: {"slidr": "../pretrain/demo_cpu.yaml",
                                                    "ppkt": "../pretrain/ppkt_demo_cpu.yaml"})
    probe: str = "../downstream/probe_demo_cpu.yaml"
    train_split: str = "train"  # pretraining and probe training; tune on parametrizing/verifying, never on val
    eval_split: str = "val"
    knn_frames: int = 4

    def validate(self, where: str) -> None:
        for name in ("scenes", "frames", "workers", "knn_frames"):
            _positive(getattr(self, name), f"{where}.{name}")
        if len(self.image_size) != 2 or min(self.image_size) < 64:
            raise ConfigError(f"{where}.image_size must be [width, height], each >= 64, got {self.image_size}")


# --------------------------------------------------------------------------------------------------------------
# Machinery.
# --------------------------------------------------------------------------------------------------------------


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Build a ``cls`` instance from an optional YAML file and ``dotted.key=value`` overrides, validated."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
        source = str(path)
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, where=source)


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like dotted.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Recursively build dataclass ``cls`` from a mapping, checking keys, types and each ``validate``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    instance = cls(**kwargs)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint) and f.name not in data:
            # defaults of nested sections are validated too
            _validate(getattr(instance, f.name), f"{where}.{f.name}")
    _validate(instance, where)
    return instance


def to_dict(config: Any) -> dict:
    """Plain-data form of a config (what ``save_config`` writes)."""
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from slidr.utils.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))


def _validate(instance: Any, where: str) -> None:
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate(where)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_hint = args[0] if args else Any
        return [_coerce(item, item_hint, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _positive(value: float, where: str) -> None:
    if not value > 0:
        raise ConfigError(f"{where} must be > 0, got {value}")


def _in_unit_interval(value: float, where: str) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{where} must be in [0, 1], got {value}")


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data
