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

    method: Literal["slic", "fh", "masks", "none"] = "slic"
    n_segments: int = 150
    root: Optional[str] = None  # default: <index folder>/superpixels
    source: Optional[str] = None  # method "masks": name of the imported mask set (folder masks_<source>)


@dataclass
class DataConfig:
    """Where the data is and how a sample is turned into tensors."""

    dataset: Literal["nuscenes", "semantickitti"] = "nuscenes"
    index: str = "data/synth/index.npz"
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

    encoder: Literal["resnet50", "resnet18", "vit_small", "convnet_small"] = "resnet50"
    dilated: bool = True  # SLidR: strides of the last three stages replaced by dilation; PPKT: False
    weights: Optional[str] = None  # local checkpoint file; None = random init (a warning says so)
    weights_prefix: Optional[str] = None  # prefix stripped from checkpoint keys, e.g. "module.encoder_q."
    out_channels: int = 64
    normalize_output: bool = True
    freeze_encoder: bool = True


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


DETECTION_REGRESSION_CHANNELS = 8  # offset x, offset y, z, log length, log width, log height, sin yaw, cos yaw


@dataclass
class DetectionHeadConfig:
    """The bird's-eye-view detection head on a 3D backbone (``slidr.models.detection``, CenterPoint-style).

    Point features of the backbone are pooled into a Cartesian BEV grid over ``point_range`` (points outside it
    are left out), a 2D CNN neck (SECOND-style: one block per entry of ``neck_channels``, each after the first
    at half the resolution of the previous, all upsampled back and concatenated) feeds a per-class centre heatmap
    and the box regression heads. Defaults: KITTI's front range and OpenPCDet's CenterPoint settings for KITTI
    (Gaussian overlap 0.1, minimum radius 2, loss weights 1 / 2, score threshold 0.1, NMS IoU 0.01).
    """

    classes: list[str] = field(default_factory=lambda: ["Car", "Pedestrian", "Cyclist"])
    # x_min, y_min, z_min, x_max, y_max, z_max in the lidar frame, metres (KITTI: the camera's front range)
    point_range: list[float] = field(default_factory=lambda: [0.0, -40.0, -3.0, 70.4, 40.0, 1.0])
    cell_size: float = 0.4  # BEV cell (m); also the heatmap's resolution (SECOND's KITTI output map: 0.4 m)
    pooling: Literal["max", "mean"] = "max"  # of the point features falling in a cell
    geometric_features: bool = True  # add log(1 + points), min / mean / max height of the cell's points
    neck_channels: list[int] = field(default_factory=lambda: [64, 128])
    neck_layers: list[int] = field(default_factory=lambda: [2, 2])  # 3x3 convolutions after each block's first
    upsample_channels: int = 64  # per neck block, after upsampling to the BEV resolution
    head_channels: int = 64  # shared 3x3 convolution and hidden layer of each separate head
    bn_momentum: float = 0.01
    # targets and loss
    gaussian_overlap: float = 0.1  # CenterNet's radius rule: the IoU a box shifted by the radius keeps
    min_radius: int = 2  # cells
    heatmap_weight: float = 1.0
    regression_weight: float = 2.0
    code_weights: list[float] = field(default_factory=lambda: [1.0] * DETECTION_REGRESSION_CHANNELS)
    # decoding
    top_k: int = 500  # heatmap peaks kept per scan before the score threshold and NMS
    score_threshold: float = 0.1
    nms_iou: Optional[float] = 0.01  # rotated BEV IoU; null: no NMS (peaks only, as CenterPoint on nuScenes)
    nms_per_class: bool = False  # false: one NMS over all classes (OpenPCDet's KITTI CenterPoint)
    max_detections: int = 100  # per scan, after NMS
    drop_outside_image: bool = True  # KITTI output: drop detections whose 2D box misses the image

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows along y, columns along x) of the BEV grid."""
        x_min, y_min, _, x_max, y_max, _ = self.point_range
        return round((y_max - y_min) / self.cell_size), round((x_max - x_min) / self.cell_size)

    def validate(self, where: str) -> None:
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"{where}.classes must be a non-empty list of distinct names, got {self.classes}")
        if len(self.point_range) != 6:
            raise ConfigError(f"{where}.point_range must be [x_min, y_min, z_min, x_max, y_max, z_max]")
        low, high = self.point_range[:3], self.point_range[3:]
        if any(hi <= lo for lo, hi in zip(low, high)):
            raise ConfigError(f"{where}.point_range must have each max > min, got {self.point_range}")
        _positive(self.cell_size, f"{where}.cell_size")
        for axis, lo, hi in (("x", low[0], high[0]), ("y", low[1], high[1])):
            cells = (hi - lo) / self.cell_size
            if abs(cells - round(cells)) > 1e-6 * max(1.0, cells):
                raise ConfigError(f"{where}.cell_size {self.cell_size} does not divide the {axis} range "
                                  f"{hi - lo:g} m of point_range into whole cells")
        if not self.neck_channels or len(self.neck_channels) != len(self.neck_layers):
            raise ConfigError(f"{where}.neck_channels and {where}.neck_layers must be non-empty lists of the same "
                              f"length, got {self.neck_channels} and {self.neck_layers}")
        if min(self.neck_channels) < 1 or min(self.neck_layers) < 0:
            raise ConfigError(f"{where}.neck_channels must be >= 1 and {where}.neck_layers >= 0")
        for name in ("upsample_channels", "head_channels", "top_k", "max_detections"):
            _positive(getattr(self, name), f"{where}.{name}")
        if not 0 < self.gaussian_overlap < 1:
            raise ConfigError(f"{where}.gaussian_overlap must be in (0, 1), got {self.gaussian_overlap}")
        if self.min_radius < 0:
            raise ConfigError(f"{where}.min_radius must be >= 0, got {self.min_radius}")
        if len(self.code_weights) != DETECTION_REGRESSION_CHANNELS or min(self.code_weights) < 0:
            raise ConfigError(f"{where}.code_weights must be {DETECTION_REGRESSION_CHANNELS} numbers >= 0 (offset x, "
                              f"offset y, z, log l, log w, log h, sin yaw, cos yaw), got {self.code_weights}")
        if self.heatmap_weight < 0 or self.regression_weight < 0:
            raise ConfigError(f"{where}.heatmap_weight and {where}.regression_weight must be >= 0")
        if not 0 <= self.score_threshold < 1:
            raise ConfigError(f"{where}.score_threshold must be in [0, 1), got {self.score_threshold}")
        if self.nms_iou is not None and not 0 <= self.nms_iou <= 1:
            raise ConfigError(f"{where}.nms_iou must be in [0, 1] or null, got {self.nms_iou}")


@dataclass
class DetectionConfig:
    """``slidr detect``: 3D object detection (KITTI) with a (pretrained) backbone and a BEV CenterPoint head."""

    pretrained: Optional[str] = None  # exported pretraining file or state dict; None = random init
    data: DataConfig = field(default_factory=lambda: DataConfig(
        dataset="semantickitti", index="data/kitti-object/index.npz", cameras=["image_2"],
        augment=AugmentConfig(enabled=False)))
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(normalize_output=False))
    head: DetectionHeadConfig = field(default_factory=DetectionHeadConfig)
    # OpenPCDet's KITTI CenterPoint: Adam (one-cycle) at 0.003, weight decay 0.01, 80 epochs, batch 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=0.003, weight_decay=0.01))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(epochs=80, batch_size=8))
    recall_positions: int = 40  # evaluation: AP|R40 (11: AP|R11 of older papers)

    def validate(self, where: str) -> None:
        if self.recall_positions not in (11, 40):
            raise ConfigError(f"{where}.recall_positions must be 11 or 40, got {self.recall_positions}")


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
