"""One configuration system: typed, frozen dataclasses, loaded from YAML, overridable by dotted paths, validated.

Every setting of every command lives in one of the dataclasses below (a benchmark's own knobs live in its
module). A YAML file gives any subset of the fields; the command line overrides single fields with
``dotted.path=value`` (``trainer.epochs=3``, ``data.image_size=[224,416]``, ``image.weights=null``,
``optim.lr=1e-3``; ``pretrain.*.trainer.epochs=1`` sets the key in every entry of a mapping). A value typed on
the command line is read according to the setting's type: a string setting keeps the text as typed (``00``
stays ``"00"``), a number setting accepts every number Python's ``float()`` / ``int()`` reads, ``null`` is
``None``. Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key, where it
was set and, for unknown keys, the valid ones. Fields that name a registered entry (``method``,
``backbone.name``, ``image.encoder``, ``optim.optimizer``) are typed ``Annotated[str, RegistryName(kind)]``:
their allowed values are the names of that registry (:mod:`slidr.registry`), imported only when such a field is
checked.

Rules of composition:

- a section given in a file or by overrides is laid over that section's default (``DownstreamConfig.data``
  defaults to no augmentation, so ``data.index=...`` keeps augmentation off);
- a setting whose type is a config class may name a config file instead (``probe: downstream/probe.yaml``):
  that file alone gives the section, over the class defaults; relative names are looked up beside the
  referring file, then in the working directory, then among the packaged configs;
- configs are frozen and validated on construction: derive a changed one with :func:`with_changes` (or
  ``dataclasses.replace``), never by assignment.

The packaged configs (``slidr/configs/``, ``slidr configs`` lists them) reproduce the paper's settings by name:
``--config configs/pretrain/slidr_minkunet.yaml``, ``--config pretrain/slidr_minkunet.yaml`` and
``--config slidr_minkunet`` all find ``slidr/configs/pretrain/slidr_minkunet.yaml`` from any folder.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import importlib.resources
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, TypeVar

import yaml

from slidr.errors import ConfigError
from slidr.registry import RegistryName

T = TypeVar("T")

NUSCENES_CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)
KNN_CLASSES = ("vegetation", "car", "pedestrian")  # classes of ``slidr knn`` by default
#: EfficientNet-Lite stages, named by their stride in the plain network (``image.feature_stages``)
EFFICIENTNET_STAGE_STRIDES = (2, 4, 8, 16, 32)


def setting(default: Any = dataclasses.MISSING, *, help: str,
            factory: Optional[Callable[[], Any]] = None) -> Any:
    """A dataclass field documented by ``help`` (the help text of its command-line option, if it has one).

    Without ``default`` and ``factory`` the setting is required.
    """
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


_VALIDATING_AT: contextvars.ContextVar[str] = contextvars.ContextVar("slidr_config_where", default="")


class ConfigBase:
    """Base of every config class: validated when constructed (``from_dict``, ``dataclasses.replace``, a call).

    Subclasses are ``@dataclass(frozen=True)`` and may define ``validate(self, where)``, raising
    :class:`ConfigError` for values out of range; ``where`` is the dotted key of the instance ("" at the top).
    """

    def __post_init__(self) -> None:
        validate = getattr(self, "validate", None)
        if validate is not None:
            validate(_VALIDATING_AT.get())


# --------------------------------------------------------------------------------------------------------------
# Settings. Defaults are the paper's (SLidR, CVPR 2022, supplementary C/D and the authors' published configs).
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoxelConfig(ConfigBase):
    """Voxelization of a scan.

    cylindrical: (rho / size, azimuth / azimuth_step_deg, z / size); cartesian: (x, y, z) / size.
    """

    mode: Literal["cylindrical", "cartesian"] = "cylindrical"
    size: float = 0.1
    azimuth_step_deg: float = 1.0

    def validate(self, where: str) -> None:
        positive(self.size, subkey(where, "size"))
        positive(self.azimuth_step_deg, subkey(where, "azimuth_step_deg"))


@dataclass(frozen=True)
class AugmentConfig(ConfigBase):
    """Paired point-cloud and image augmentations (supplementary B). ``enabled: false`` gives validation mode.

    Defaults follow the authors' release (``utils/transforms.py``), which produced the paper's numbers:

    - DropCuboids: one cuboid centred on a random point, each side ``u * cuboid_max_fraction`` of that axis' range
      (one ``u`` uniform in [0, 1) for all axes; release 20%, the supplement's text 10%); refused, and then nothing
      is dropped, when any camera would keep fewer than ``min_pairs`` pairs (``cuboid_rule: per_camera``), after
      ``cuboid_tries`` draws (release: one). ``cuboid_rule: total`` counts the pairs of all cameras together
      (slidr 0.1's rule; with ``cuboid_max_fraction: 0.1`` and ``cuboid_tries: 10``, the text's variant).
    - ResizedCrop: a crop is accepted when it keeps more than ``min_pairs`` pairs or more than
      ``min_pair_fraction`` of them (strict inequalities, as the release); the release retries without end,
      slidr at most ``max_tries`` times before resizing the whole image (never needed on the real keyframe).
    """

    enabled: bool = True
    rotate_z: bool = True
    flip_prob: float = 0.5
    drop_cuboid: bool = True
    cuboid_max_fraction: float = 0.2
    cuboid_rule: Literal["per_camera", "total"] = "per_camera"
    cuboid_tries: int = 1
    image_hflip_prob: float = 0.5
    crop_min_area: float = 0.3
    crop_aspect_range: list[float] = field(default_factory=lambda: [14 / 9, 17 / 9])
    min_pairs: int = 1024
    min_pair_fraction: float = 0.75
    max_tries: int = 10  # crop draws per image before the whole image is resized

    def validate(self, where: str) -> None:
        for name in ("flip_prob", "image_hflip_prob", "crop_min_area", "cuboid_max_fraction", "min_pair_fraction"):
            _in_unit_interval(getattr(self, name), subkey(where, name))
        positive(self.max_tries, subkey(where, "max_tries"))
        positive(self.cuboid_tries, subkey(where, "cuboid_tries"))
        at_least(self.min_pairs, 0, subkey(where, "min_pairs"))
        aspect = self.crop_aspect_range
        if len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]:
            raise ConfigError(f"{subkey(where, 'crop_aspect_range')} must be [low, high] with 0 < low <= high, "
                              f"got {aspect}", key=subkey(where, "crop_aspect_range"))


@dataclass(frozen=True)
class SuperpixelConfig(ConfigBase):
    """Which precomputed superpixels to use (``slidr superpixels`` writes them)."""

    method: Literal["slic", "fh", "masks", "none"] = setting(
        "slic", help="SLIC (compactness 6, sigma 3) or Felzenszwalb-Huttenlocher (scale 300, sigma 0.35, "
                     "min_size 4000), or import masks computed elsewhere (--from)")
    n_segments: int = setting(150, help="SLIC's target number of segments")
    root: Optional[str] = setting(None, help="folder of all superpixel variants (default: <index folder>/superpixels)")
    source: Optional[str] = setting(
        None, help="masks: name of the imported mask set, folder masks_<name> (default: the --from folder's name)")

    def validate(self, where: str) -> None:
        positive(self.n_segments, subkey(where, "n_segments"))


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the data is and how a sample is turned into tensors."""

    dataset: Literal["nuscenes", "semantickitti", "kitti_object"] = "nuscenes"
    index: str = "data/synth/index.npz"
    train_split: str = "train"
    val_split: str = "val"
    label_fraction: float = 1.0
    cameras: list[str] = field(default_factory=lambda: list(NUSCENES_CAMERAS))
    image_size: list[int] = field(default_factory=lambda: [224, 416])  # (height, width) after crop
    num_workers: int = 0
    # input feature of a point (slidr.data.voxelize.point_features): "release" = the authors' loaders (nuScenes
    # intensity as stored, 0..255; SemanticKITTI remission + 1); "unit" = both scaled to [0, 1] (slidr 0.1)
    point_features: Literal["release", "unit"] = "release"
    voxel: VoxelConfig = field(default_factory=VoxelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)

    def validate(self, where: str) -> None:
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"{subkey(where, 'label_fraction')} must be in (0, 1], got {self.label_fraction}",
                              key=subkey(where, "label_fraction"))
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ConfigError(f"{subkey(where, 'image_size')} must be [height, width], each >= 32, got "
                              f"{self.image_size}", key=subkey(where, "image_size"))
        at_least(self.num_workers, 0, subkey(where, "num_workers"))


@dataclass(frozen=True)
class BackboneConfig(ConfigBase):
    """The 3D sparse U-Net."""

    name: Annotated[str, RegistryName("backbone")] = "minkunet34"  # slidr.models.BACKBONES
    in_channels: int = 1
    out_channels: int = 64
    bn_momentum: float = 0.05  # every batch norm outside the residual blocks' two (and the blocks' shortcuts)
    block_bn_momentum: float = 0.1  # the two batch norms of each residual block (the release's BasicBlock default)
    # initial weights of the transposed convolutions: uniform in +-1/sqrt(8 * fan), fan = output channels as
    # MinkowskiEngine's (the release) or input channels (slidr 0.1)
    transposed_init_fan: Literal["out", "in"] = "out"
    normalize_output: bool = True
    backend: Literal["torch", "spconv"] = "torch"

    def validate(self, where: str) -> None:
        positive(self.in_channels, subkey(where, "in_channels"))
        positive(self.out_channels, subkey(where, "out_channels"))
        _in_unit_interval(self.bn_momentum, subkey(where, "bn_momentum"))
        _in_unit_interval(self.block_bn_momentum, subkey(where, "block_bn_momentum"))


@dataclass(frozen=True)
class DownstreamBackboneConfig(BackboneConfig):
    """The 3D network of a downstream run: by default the one of the pretrained file.

    ``name`` and ``in_channels`` left unset (``null``) are taken from the pretrained file's recorded backbone
    settings (``slidr pretrain``'s ``pretrained.pt``, a downstream ``model.pt``), or are :class:`BackboneConfig`'s
    defaults for a random initialisation or a file that records none. A value given that contradicts the file is
    refused, naming both. The other fields are the downstream run's own (batch-norm momentum, backend).
    """

    name: Optional[Annotated[str, RegistryName("backbone")]] = None  # type: ignore[assignment]
    in_channels: Optional[int] = None  # type: ignore[assignment]
    normalize_output: bool = False

    def validate(self, where: str) -> None:
        if self.in_channels is not None:
            positive(self.in_channels, subkey(where, "in_channels"))
        positive(self.out_channels, subkey(where, "out_channels"))
        _in_unit_interval(self.bn_momentum, subkey(where, "bn_momentum"))


ARCHITECTURE_KEYS = ("name", "in_channels")  # backbone settings a downstream run takes from the pretrained file


@dataclass(frozen=True)
class ImageModelConfig(ConfigBase):
    """The frozen image teacher and its trainable head."""

    encoder: Annotated[str, RegistryName("image_encoder")] = "resnet50"  # slidr.models.IMAGE_ENCODERS
    dilated: bool = True  # SLidR: strides of the last three stages replaced by dilation; PPKT: False
    # local checkpoint file, or package:<name> for weights shipped by an installed package (package:efficientnet-lite0);
    # None = random init (a warning says so)
    weights: Optional[str] = None
    weights_prefix: Optional[str] = None  # prefix stripped from checkpoint keys, e.g. "module.encoder_q."
    out_channels: int = 64
    normalize_output: bool = True
    freeze_encoder: bool = True
    layers: int = 1  # ViT encoders: patch tokens of the last k blocks, concatenated (k * D channels)
    final_norm: bool = True  # ViT encoders: through the final LayerNorm; false: pre-norm tokens (ScaLR's x_pre_norm)
    # EfficientNet-Lite encoders: the stages whose outputs are the dense features, named by their stride in the plain
    # network (2, 4, 8, 16, 32), concatenated at the finest one's resolution; null: the encoder's default [8, 16]
    feature_stages: Optional[list[int]] = None
    output_stride: Optional[int] = None  # EfficientNet-Lite encoders: strides past this become dilation; null: none

    def validate(self, where: str) -> None:
        positive(self.out_channels, subkey(where, "out_channels"))
        positive(self.layers, subkey(where, "layers"))
        if (self.layers != 1 or not self.final_norm) and not self.encoder.startswith(("vit", "dinov2")):
            raise ConfigError(f"{subkey(where, 'layers')} and {subkey(where, 'final_norm')} apply to ViT encoders "
                              f"(vit_small, dinov2_*), not to {self.encoder}", key=subkey(where, "layers"))
        stages_key, stride_key = subkey(where, "feature_stages"), subkey(where, "output_stride")
        if (self.feature_stages is not None or self.output_stride is not None) and \
                not self.encoder.startswith("efficientnet"):
            raise ConfigError(f"{stages_key} and {stride_key} apply to EfficientNet-Lite encoders "
                              f"(efficientnet_lite*), not to {self.encoder}; set them to null", key=stages_key)
        if self.feature_stages is not None and (
                not self.feature_stages or not set(self.feature_stages) <= set(EFFICIENTNET_STAGE_STRIDES)):
            raise ConfigError(f"{stages_key} must be a non-empty subset of {list(EFFICIENTNET_STAGE_STRIDES)} (stages "
                              f"named by their stride), got {self.feature_stages}", key=stages_key)
        if self.output_stride is not None and self.output_stride not in EFFICIENTNET_STAGE_STRIDES:
            raise ConfigError(f"{stride_key} must be one of {list(EFFICIENTNET_STAGE_STRIDES)} or null, got "
                              f"{self.output_stride}", key=stride_key)


@dataclass(frozen=True)
class LossConfig(ConfigBase):
    """Contrastive loss settings shared by the pretraining methods."""

    temperature: float = 0.07
    use_superpixels: bool = True  # False: every pixel is its own superpixel ("no superpixels" ablation)
    renormalize_means: bool = False  # the authors' release averages normalised features without re-normalising
    num_matches: int = 4096  # PPKT / PointContrast: random subset of pairs per batch
    gather_negatives: bool = False  # DDP: gather negatives across processes (release: per-GPU loss)
    queue_size: int = 60000  # DepthContrast
    momentum: float = 0.999  # DepthContrast key encoders
    embedding_dim: int = 128  # DepthContrast: size of the global (pooled) embeddings
    # ST-SLidR (TRAILab/ST-SLidR): per-anchor quantiles of the negatives' weights 1 - clip(teacher cosine, 0, 1)
    # outside which a negative gets weight 0 (0 and 1: the soft weights themselves); release: 0.01 and 1.0
    min_quantile: float = 0.01
    max_quantile: float = 1.0
    class_balance: bool = True  # ST-SLidR: weight anchors by the rarity of their teacher features (votes)
    balance_threshold: float = 0.5  # ST-SLidR: teacher similarities below it do not vote (noise)

    def validate(self, where: str) -> None:
        positive(self.temperature, subkey(where, "temperature"))
        positive(self.num_matches, subkey(where, "num_matches"))
        positive(self.queue_size, subkey(where, "queue_size"))
        _in_unit_interval(self.momentum, subkey(where, "momentum"))
        positive(self.embedding_dim, subkey(where, "embedding_dim"))
        _in_unit_interval(self.min_quantile, subkey(where, "min_quantile"))
        _in_unit_interval(self.max_quantile, subkey(where, "max_quantile"))
        if self.min_quantile > self.max_quantile:
            raise ConfigError(f"{subkey(where, 'min_quantile')} ({self.min_quantile}) must not exceed "
                              f"{subkey(where, 'max_quantile')} ({self.max_quantile})",
                              key=subkey(where, "min_quantile"))
        if not -1 <= self.balance_threshold <= 1:
            raise ConfigError(f"{subkey(where, 'balance_threshold')} is a cosine similarity, in [-1, 1], got "
                              f"{self.balance_threshold}", key=subkey(where, "balance_threshold"))


@dataclass(frozen=True)
class ScalrConfig(ConfigBase):
    """ScaLR-style distillation (``method: scalr``; valeoai/ScaLR): point features regressed onto the frozen
    teacher's pixel features through a projection head, without negatives. Defaults are the release's."""

    head: Literal["linear", "mlp"] = "linear"  # projection of the 3D features (release: one linear layer)
    head_hidden: Optional[int] = None  # width of the MLP's hidden layer (head: mlp; default: its input width)
    distance: Literal["euclidean", "cosine"] = "euclidean"  # ||k/|k| - q/|q||| (release) or 1 - cos
    one_camera: bool = True  # one camera drawn per scan, only its image decoded (release); false: every camera
    paired_points_only: bool = True  # the 3D network sees only the points projecting into a loaded image (release)
    max_points: Optional[int] = 20000  # random subset of the points fed to the 3D network; null: all

    def validate(self, where: str) -> None:
        if self.head_hidden is not None:
            positive(self.head_hidden, subkey(where, "head_hidden"))
            if self.head != "mlp":
                raise ConfigError(f"{subkey(where, 'head_hidden')} is the hidden width of head 'mlp'; head is "
                                  f"{self.head!r}", key=subkey(where, "head_hidden"))
        if self.max_points is not None:
            positive(self.max_points, subkey(where, "max_points"), "(or null: every point)")


@dataclass(frozen=True)
class OptimConfig(ConfigBase):
    """Optimizer and learning-rate schedule."""

    optimizer: Annotated[str, RegistryName("optimizer")] = "sgd"  # slidr.engine.optim.OPTIMIZERS
    lr: float = 0.5
    lr_head: Optional[float] = None  # downstream fine-tuning: separate learning rate of the classifier
    momentum: float = 0.9
    dampening: float = 0.1
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "constant"] = "cosine"
    min_lr: float = 0.0
    # linear warmup from 0 over this many optimizer steps, then the schedule per step over the remaining ones
    # (ScaLR's WarmupCosine); 0: none, the cosine is epoch-wise (SLidR)
    warmup_steps: int = 0

    def validate(self, where: str) -> None:
        positive(self.lr, subkey(where, "lr"))
        if self.lr_head is not None:
            positive(self.lr_head, subkey(where, "lr_head"))
        at_least(self.momentum, 0, subkey(where, "momentum"))
        _in_unit_interval(self.dampening, subkey(where, "dampening"))
        at_least(self.weight_decay, 0, subkey(where, "weight_decay"))
        at_least(self.min_lr, 0, subkey(where, "min_lr"))
        at_least(self.warmup_steps, 0, subkey(where, "warmup_steps"))


@dataclass(frozen=True)
class TrainerConfig(ConfigBase):
    """How training runs: epochs, batch, devices, checkpoints, logging."""

    epochs: Optional[int] = 50  # downstream: null = by the paper's rule (downstream_epochs)
    max_steps: int = -1  # -1: derived from epochs
    batch_size: int = 16
    drop_last: bool = False  # drop the last incomplete training batch of each epoch (the authors' loaders: true)
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
    # what the config is sized for: "gpu" (the paper's configs) warns when it runs on a CPU; None: no warning
    intended_accelerator: Optional[Literal["cpu", "gpu"]] = None

    def validate(self, where: str) -> None:
        if self.epochs is not None:
            positive(self.epochs, subkey(where, "epochs"))
        if self.max_steps != -1:
            positive(self.max_steps, subkey(where, "max_steps"), "(or -1: derived from epochs)")
        positive(self.batch_size, subkey(where, "batch_size"))
        if isinstance(self.devices, bool) or (isinstance(self.devices, int) and self.devices < 1
                                              and self.devices != -1):
            raise ConfigError(f"{subkey(where, 'devices')} must be a count >= 1, -1 (all), a list of device ids or "
                              f"'auto', got {self.devices!r}", key=subkey(where, "devices"))
        positive(self.num_nodes, subkey(where, "num_nodes"))
        at_least(self.seed, 0, subkey(where, "seed"))
        at_least(self.keep_checkpoints, 0, subkey(where, "keep_checkpoints"))
        positive(self.log_every_n_steps, subkey(where, "log_every_n_steps"))
        if self.num_threads is not None:
            positive(self.num_threads, subkey(where, "num_threads"))
        if self.limit_train_batches is not None:
            positive(self.limit_train_batches, subkey(where, "limit_train_batches"))


@dataclass(frozen=True)
class ScanPairConfig(ConfigBase):
    """PointContrast pairs of keyframes and DepthContrast views (``slidr.data.scan_pairs``)."""

    min_distance: float = 10.0  # PointContrast: pairs whose lidars are closer than this (m) are dropped
    min_matches: int = 1024  # PointContrast: pairs with fewer matched points are dropped
    match_radius: float = 0.1  # a match: nearest neighbour in the other registered cloud closer than this (m)
    max_points: int = 20000  # DepthContrast: points fed to the point network (random subset per view)
    equivalent_epochs: Optional[int] = 50  # PointContrast: steps = as many clouds as SLidR sees in these epochs
    cache: Optional[str] = None  # PointContrast: JSON file caching the selected pairs (default: beside the index)

    def validate(self, where: str) -> None:
        positive(self.min_matches, subkey(where, "min_matches"))
        positive(self.match_radius, subkey(where, "match_radius"))
        positive(self.max_points, subkey(where, "max_points"))
        at_least(self.min_distance, 0, subkey(where, "min_distance"))
        if self.equivalent_epochs is not None:
            positive(self.equivalent_epochs, subkey(where, "equivalent_epochs"))


@dataclass(frozen=True)
class PretrainConfig(ConfigBase):
    """``slidr pretrain``: self-supervised pretraining of the 3D backbone."""

    method: Annotated[str, RegistryName("method")] = "slidr"  # slidr.methods.METHODS
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image: ImageModelConfig = field(default_factory=ImageModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pairs: ScanPairConfig = field(default_factory=ScanPairConfig)
    scalr: ScalrConfig = field(default_factory=ScalrConfig)

    def validate(self, where: str) -> None:
        if self.trainer.epochs is None:
            key = subkey(where, "trainer.epochs")
            raise ConfigError(f"{key} must be set for pretraining (null, the paper's rule, applies to slidr probe / "
                              f"slidr finetune only)", key=key)


# Epochs of the paper's downstream trainings: linear probing 50 (supplementary D.1); fine-tuning 100 epochs with
# 1% of the labels, 50 with 5, 10, 25 or 100% (supplementary D.3, "annotation efficiency").
PROBE_EPOCHS = 50
FEW_LABEL_EPOCHS = 100  # label fractions of 1% and below
MANY_LABEL_EPOCHS = 50


def downstream_epochs(mode: str, label_fraction: float) -> int:
    """The paper's number of epochs of a downstream training (what ``trainer.epochs: null`` resolves to).

    Probing: 50 (D.1). Fine-tuning (D.3): 100 epochs when the labelled scans are 1% of the split or fewer
    (``round(1 / label_fraction) >= 100``, the authors' ``dataset_skip_step``), 50 otherwise (5, 10, 25, 100%).
    """
    if mode == "probe":
        return PROBE_EPOCHS
    return FEW_LABEL_EPOCHS if round(1.0 / label_fraction) >= 100 else MANY_LABEL_EPOCHS


@dataclass(frozen=True)
class DownstreamConfig(ConfigBase):
    """``slidr probe`` / ``slidr finetune``: semantic segmentation on top of a (pretrained) backbone."""

    mode: Literal["probe", "finetune"] = "probe"
    pretrained: Optional[str] = setting(
        None, help="pretrained file (slidr pretrain's pretrained.pt or a state dict); none = random init")
    lovasz: bool = True
    lr_random_init: float = 0.05  # fine-tuning from random init: one learning rate for all (authors' config)
    cache_features: bool = True  # probe without augmentation: compute the frozen features once
    # probe: standardise the frozen features with training statistics before the classifier (MAE's linear-probe
    # practice), folded into ``final`` afterwards; false = the authors' plain linear layer on raw features
    standardize_features: bool = False
    val_every_n_epochs: int = 0  # evaluate data.val_split during training every N epochs (0: only after training)
    data: DataConfig = field(default_factory=lambda: DataConfig(augment=AugmentConfig(enabled=False)))
    backbone: DownstreamBackboneConfig = setting(
        factory=DownstreamBackboneConfig,
        help="3D network; name and in_channels unset: those of the pretrained file")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.05))
    # epochs null: the paper's rule for the mode and label fraction (downstream_epochs), resolved by
    # ``with_resolved_epochs`` before a run (``slidr probe/finetune --print-config`` shows the resolved value)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(epochs=None))

    def validate(self, where: str) -> None:
        positive(self.lr_random_init, subkey(where, "lr_random_init"))
        at_least(self.val_every_n_epochs, 0, subkey(where, "val_every_n_epochs"))

    def with_resolved_epochs(self) -> DownstreamConfig:
        """This config with ``trainer.epochs`` set: as given, or by :func:`downstream_epochs` when null."""
        if self.trainer.epochs is not None:
            return self
        return with_changes(self, {"trainer.epochs": downstream_epochs(self.mode, self.data.label_fraction)})


DETECTION_REGRESSION_CHANNELS = 8  # offset x, offset y, z, log length, log width, log height, sin yaw, cos yaw


@dataclass(frozen=True)
class DetectionHeadConfig(ConfigBase):
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
        w = f"{where}." if where else ""
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"{w}classes must be a non-empty list of distinct names, got {self.classes}")
        if len(self.point_range) != 6:
            raise ConfigError(f"{w}point_range must be [x_min, y_min, z_min, x_max, y_max, z_max]")
        low, high = self.point_range[:3], self.point_range[3:]
        if any(hi <= lo for lo, hi in zip(low, high)):
            raise ConfigError(f"{w}point_range must have each max > min, got {self.point_range}")
        positive(self.cell_size, f"{w}cell_size")
        for axis, lo, hi in (("x", low[0], high[0]), ("y", low[1], high[1])):
            cells = (hi - lo) / self.cell_size
            if abs(cells - round(cells)) > 1e-6 * max(1.0, cells):
                raise ConfigError(f"{w}cell_size {self.cell_size} does not divide the {axis} range "
                                  f"{hi - lo:g} m of point_range into whole cells")
        if not self.neck_channels or len(self.neck_channels) != len(self.neck_layers):
            raise ConfigError(f"{w}neck_channels and {w}neck_layers must be non-empty lists of the same "
                              f"length, got {self.neck_channels} and {self.neck_layers}")
        if min(self.neck_channels) < 1 or min(self.neck_layers) < 0:
            raise ConfigError(f"{w}neck_channels must be >= 1 and {w}neck_layers >= 0")
        for name in ("upsample_channels", "head_channels", "top_k", "max_detections"):
            positive(getattr(self, name), f"{w}{name}")
        if not 0 < self.gaussian_overlap < 1:
            raise ConfigError(f"{w}gaussian_overlap must be in (0, 1), got {self.gaussian_overlap}")
        if self.min_radius < 0:
            raise ConfigError(f"{w}min_radius must be >= 0, got {self.min_radius}")
        if len(self.code_weights) != DETECTION_REGRESSION_CHANNELS or min(self.code_weights) < 0:
            raise ConfigError(f"{w}code_weights must be {DETECTION_REGRESSION_CHANNELS} numbers >= 0 (offset x, "
                              f"offset y, z, log l, log w, log h, sin yaw, cos yaw), got {self.code_weights}")
        if self.heatmap_weight < 0 or self.regression_weight < 0:
            raise ConfigError(f"{w}heatmap_weight and {w}regression_weight must be >= 0")
        if not 0 <= self.score_threshold < 1:
            raise ConfigError(f"{w}score_threshold must be in [0, 1), got {self.score_threshold}")
        if self.nms_iou is not None and not 0 <= self.nms_iou <= 1:
            raise ConfigError(f"{w}nms_iou must be in [0, 1] or null, got {self.nms_iou}")


@dataclass(frozen=True)
class DetectionAugmentConfig(ConfigBase):
    """Training augmentations of ``slidr detect``: they move the boxes with the points (``slidr.data.detection``).

    OpenPCDet's KITTI recipe, in its order: a mirror across the x-z plane (``y -> -y``, ``yaw -> -yaw``) with
    ``flip_prob``, a rotation about z by an angle uniform in ``[-rotation_deg, rotation_deg]`` (``yaw + angle``),
    a global scaling by a factor uniform in ``scale_range`` (centres and sizes). No cuboid drop (it would cut
    objects) and no ground-truth database sampling (copy-paste of objects between scans).
    """

    enabled: bool = True
    flip_prob: float = 0.5
    rotation_deg: float = 45.0
    scale_range: list[float] = field(default_factory=lambda: [0.95, 1.05])

    def validate(self, where: str) -> None:
        _in_unit_interval(self.flip_prob, subkey(where, "flip_prob"))
        if not 0 <= self.rotation_deg <= 180:
            raise ConfigError(f"{subkey(where, 'rotation_deg')} must be in [0, 180], got {self.rotation_deg}",
                              key=subkey(where, "rotation_deg"))
        scale = self.scale_range
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"{subkey(where, 'scale_range')} must be [low, high] with 0 < low <= high, got "
                              f"{scale}", key=subkey(where, "scale_range"))


@dataclass(frozen=True)
class DetectionConfig(ConfigBase):
    """``slidr detect``: 3D object detection (KITTI) with a (pretrained) backbone and a BEV CenterPoint head.

    ``data`` names a ``kitti_object`` index (``slidr prepare kitti-object``), its splits and the label fraction
    (every k-th frame of the training split, ``k = round(1 / label_fraction)``); ``data.voxel`` must be the
    pretraining's. Detection augmentations are ``augment`` (``data.augment``, the paired image augmentation of
    pretraining, must stay disabled).
    """

    pretrained: Optional[str] = setting(
        None, help="pretrained file (slidr pretrain's pretrained.pt or a state dict); none = random init")
    data: DataConfig = field(default_factory=lambda: DataConfig(
        dataset="kitti_object", index="data/kitti_object/index.npz", cameras=["image_2"],
        augment=AugmentConfig(enabled=False)))
    crop_to_image: bool = True  # keep the points that project into image_2 (OpenPCDet's FOV_POINTS_ONLY)
    augment: DetectionAugmentConfig = field(default_factory=DetectionAugmentConfig)
    # name / in_channels unset (null): the pretrained file's network (DownstreamBackboneConfig)
    backbone: DownstreamBackboneConfig = field(default_factory=DownstreamBackboneConfig)
    head: DetectionHeadConfig = field(default_factory=DetectionHeadConfig)
    # OpenPCDet's KITTI CenterPoint: Adam (one-cycle) at 0.003, weight decay 0.01, 80 epochs, batch 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(optimizer="adamw", lr=0.003, weight_decay=0.01))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(epochs=80, batch_size=8))
    recall_positions: int = 40  # evaluation: AP|R40 (11: AP|R11 of older papers)
    val_every_n_epochs: int = 0  # evaluate data.val_split during training every N epochs (0: only after training)
    pictures: int = 4  # validation frames drawn (bird's-eye view and camera, predicted and true boxes)

    def validate(self, where: str) -> None:
        w = f"{where}." if where else ""
        if self.recall_positions not in (11, 40):
            raise ConfigError(f"{w}recall_positions must be 11 or 40, got {self.recall_positions}",
                              key=f"{w}recall_positions")
        if self.data.dataset != "kitti_object":
            raise ConfigError(f"{w}data.dataset must be kitti_object (a `slidr prepare kitti-object` index), got "
                              f"{self.data.dataset!r}", key=f"{w}data.dataset")
        if self.data.augment.enabled:
            raise ConfigError(f"{w}data.augment is pretraining's paired image augmentation; detection augmentations "
                              f"are {w}augment (set {w}data.augment.enabled=false)", key=f"{w}data.augment.enabled")
        at_least(self.val_every_n_epochs, 0, f"{w}val_every_n_epochs")
        at_least(self.pictures, 0, f"{w}pictures")


@dataclass(frozen=True)
class DemoConfig(ConfigBase):
    """``slidr demo``: the end-to-end run on the embedded synthetic world (packaged ``demo/demo.yaml``).

    ``pretrain`` (one pretraining per entry) and ``probe`` are full configs; in a file each may be given inline or
    as the name of a config file.
    """

    world: str = "data/synth-demo"  # generated (and indexed, superpixels computed) on first use, reused after
    scenes: int = 10
    frames: int = 10
    image_size: list[int] = field(default_factory=lambda: [480, 270])  # (width, height) of the generated images
    seed: int = 0
    workers: int = 2  # world generation and superpixels
    pretrain: dict[str, PretrainConfig] = field(
        default_factory=lambda: {"slidr": load_config(PretrainConfig, "pretrain/demo_cpu.yaml"),
                                 "ppkt": load_config(PretrainConfig, "pretrain/ppkt_demo_cpu.yaml")})
    probe: DownstreamConfig = field(
        default_factory=lambda: load_config(DownstreamConfig, "downstream/probe_demo_cpu.yaml"))
    train_split: str = "train"  # pretraining and probe training; tune on parametrizing/verifying, never on val
    eval_split: str = "val"
    knn_frames: int = 4

    def validate(self, where: str) -> None:
        for name in ("scenes", "frames", "workers", "knn_frames"):
            positive(getattr(self, name), subkey(where, name))
        at_least(self.seed, 0, subkey(where, "seed"))
        if len(self.image_size) != 2 or min(self.image_size) < 64:
            raise ConfigError(f"{subkey(where, 'image_size')} must be [width, height], each >= 64, got "
                              f"{self.image_size}", key=subkey(where, "image_size"))
        if not self.pretrain:
            raise ConfigError(f"{subkey(where, 'pretrain')} must name at least one pretraining",
                              key=subkey(where, "pretrain"))


# --- experiment tables: the paper's cell families (configs/paper/) and the synthetic ablations (configs/ablation/) ---


@dataclass(frozen=True)
class PaperColumnConfig(ConfigBase):
    """One downstream run of a paper table's row: its config and the paper's number."""

    label: str = setting(help="column heading, as in the paper")
    downstream: str = setting(help="downstream config (packaged name or path), e.g. downstream/probe_nuscenes.yaml")
    overrides: list[str] = setting(factory=list, help="dotted overrides of the downstream config")
    paper: Optional[float] = setting(None, help="the paper's mIoU for this cell (null: not published)")


@dataclass(frozen=True)
class PaperCellsConfig(ConfigBase):
    """``configs/paper/*.yaml``: one cell family of a paper table, a row: the pretraining it needs (``pretrain``,
    null = random initialisation) and its downstream runs (``columns``), each with the paper's number.

    ``slidr reproduce TABLE`` runs every family whose ``tables`` names TABLE.
    """

    tables: list[str] = setting(help="the tables this family is a row of: table1, table6, efficiency")
    label: str = setting(help="row heading, as in the paper")
    columns: dict[str, PaperColumnConfig] = setting(help="column key -> downstream run")
    pretrain: Optional[str] = setting(None, help="pretraining config (packaged name or path); null = random init")
    pretrain_overrides: list[str] = setting(factory=list, help="dotted overrides of the pretraining config")
    order: int = setting(0, help="row position in its tables (ascending)")
    source: str = setting("", help="where the paper's numbers come from")

    def validate(self, where: str) -> None:
        if not self.columns:
            raise ConfigError(f"{subkey(where, 'columns')} must name at least one downstream run",
                              key=subkey(where, "columns"))
        if not self.tables:
            raise ConfigError(f"{subkey(where, 'tables')} must name at least one table", key=subkey(where, "tables"))


@dataclass(frozen=True)
class AblationCellConfig(ConfigBase):
    """One cell of ``slidr ablate``: overrides of the base pretraining config (or no pretraining at all)."""

    axes: list[str] = setting(help="the table sections this cell is a row of: teacher, superpixels, method")
    overrides: list[str] = setting(factory=list, help="dotted overrides of the base pretraining config")
    random_init: bool = setting(False, help="no pretraining: probe a randomly initialised network")
    label: Optional[str] = setting(None, help="row heading (default: the cell's name)")
    published: Optional[float] = setting(
        None, help="the method's published linear-probing mIoU on nuScenes (shown for reference, not comparable)")
    published_source: str = setting("", help="where the published number comes from")


@dataclass(frozen=True)
class AblationConfig(ConfigBase):
    """``slidr ablate``: the paper's ablations at demo scale on a synthetic world (packaged
    ``ablation/demo_cpu.yaml``): every cell is ``pretrain`` with the cell's overrides, then ``probe``."""

    pretrain: PretrainConfig = field(default_factory=lambda: load_config(PretrainConfig, "pretrain/demo_cpu.yaml"))
    probe: DownstreamConfig = field(
        default_factory=lambda: load_config(DownstreamConfig, "downstream/probe_demo_cpu.yaml"))
    train_split: str = "train"  # pretraining and probe training; nothing is chosen on eval_split
    eval_split: str = "val"
    workers: int = 2  # superpixel computation
    cells: dict[str, AblationCellConfig] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        positive(self.workers, subkey(where, "workers"))


# --- settings of the data-preparation and analysis commands ------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig(ConfigBase):
    """``slidr synth``: the procedural driving world written as a nuScenes (or SemanticKITTI) dataset."""

    scenes: int = setting(10, help="number of scenes")
    frames: int = setting(10, help="keyframes per scene, at 2 Hz")
    image_size: list[int] = setting(factory=lambda: [800, 450],
                                    help="camera image size (width, height); 1600x900 is nuScenes' own")
    seed: int = setting(0, help="random seed: same seed, same dataset")
    workers: Optional[int] = setting(None, help="processes rendering in parallel (default: one per CPU core)")
    format: Literal["nuscenes", "semantickitti", "kitti-object"] = setting(
        "nuscenes", help="on-disk layout (kitti-object: KITTI 3D object layout, front camera, label_2 boxes)")
    version: str = setting("v1.0-trainval", help="nuScenes version folder name")
    previews: bool = setting(True, help="write the preview pictures")

    def validate(self, where: str) -> None:
        positive(self.scenes, subkey(where, "scenes"))
        positive(self.frames, subkey(where, "frames"))
        at_least(self.seed, 0, subkey(where, "seed"))
        if self.workers is not None:
            positive(self.workers, subkey(where, "workers"))
        if len(self.image_size) != 2 or min(self.image_size) < 64:  # the renderer's MIN_IMAGE_SIDE
            raise ConfigError(f"{subkey(where, 'image_size')} must be [width, height] with both sides >= 64 px, got "
                              f"{self.image_size}", key=subkey(where, "image_size"))


@dataclass(frozen=True)
class PrepareNuScenesConfig(ConfigBase):
    """``slidr prepare nuscenes``: index the keyframes of a nuScenes dataroot (devkit layout)."""

    dataroot: str = setting(help="folder holding <version>/*.json and samples/")
    version: str = setting("v1.0-trainval", help="table folder name: v1.0-trainval, v1.0-test, v1.0-mini, ...")
    splits: Literal["auto", "official", "stratified"] = setting(
        "auto", help="official devkit splits, stratified generated ones, or auto (stratified for the synthetic "
                     "world and unknown scenes)")


@dataclass(frozen=True)
class PrepareKittiConfig(ConfigBase):
    """``slidr prepare semantickitti``: index SemanticKITTI sequences (scans, labels, calibration, poses)."""

    root: str = setting(help="dataset folder holding sequences/ (or the sequences folder)")


@dataclass(frozen=True)
class PrepareKittiObjectConfig(ConfigBase):
    """``slidr prepare kitti-object``: index KITTI 3D object frames (boxes)."""

    root: str = setting(help="folder holding training/ (and testing/, ImageSets/)")


@dataclass(frozen=True)
class SuperpixelJobConfig(ConfigBase):
    """``slidr superpixels``: superpixels of every camera image of an index (resumable, parallel, sharded), or
    masks computed elsewhere imported as superpixels (``superpixels.method: masks``, ``from_dir``)."""

    index: str = setting(help="index file written by `slidr prepare`")
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    workers: int = setting(1, help="processes computing in parallel")
    shard: str = setting("0/1", help="compute only share I of N (0-based), e.g. one task of a cluster job array")
    cameras: Optional[list[str]] = setting(None, help="only these camera channels (default: all)")
    from_dir: Optional[str] = setting(
        None, help="masks: folder of the mask files, DIR/<image path without suffix>.{png,npz,npy,json}, or for "
                   "nuScenes also DIR/<CHANNEL>/<image stem>.{png,...} (formats: slidr.data.masks)")
    fill: Literal["unlabelled", "nearest"] = setting(
        "unlabelled", help="masks: pixels no mask covers keep id 0, left out of the losses (unlabelled), or take "
                           "the nearest mask's id")
    resize_masks: bool = setting(False, help="masks: resample masks of another size than their image (nearest "
                                             "neighbour)")

    def validate(self, where: str) -> None:
        positive(self.workers, subkey(where, "workers"))
        parse_shard(self.shard, subkey(where, "shard"))
        method_key = subkey(where, "superpixels.method")
        if self.superpixels.method == "none":
            raise ConfigError(f"{method_key}: 'none' computes nothing; choose slic, fh or masks", key=method_key)
        if (self.superpixels.method == "masks") != (self.from_dir is not None):
            raise ConfigError(f"--from DIR goes with --method masks (and only with it): {method_key} is "
                              f"{self.superpixels.method}, {subkey(where, 'from_dir')} is {self.from_dir}",
                              key=subkey(where, "from_dir"))


@dataclass(frozen=True)
class InspectConfig(ConfigBase):
    """``slidr inspect``: the numbers a user checks first for one sample of an index."""

    index: str = setting(help="index file written by `slidr prepare`")
    sample: str = setting(help="sample position (0-based) or token")
    superpixels: Optional[str] = setting(
        None, help="superpixel variant folder, e.g. slic_n150_c6_s3 (default: SLIC 150 if computed, else the first "
                   "computed variant)")
    superpixel_root: Optional[str] = setting(
        None, help="folder of the superpixel variants (default: <index folder>/superpixels)")


@dataclass(frozen=True)
class KnnConfig(ConfigBase):
    """``slidr knn``: k-NN label transfer through a sequence with pretrained 3D features."""

    pretrained: str = setting(help="exported pretraining (pretrained.pt)")
    index: Optional[str] = setting(None, help="dataset index (default: the pretraining's data.index)")
    scene: Optional[str] = setting(None, help="scene / sequence (default: the first scene of the val split)")
    classes: list[str] = setting(factory=lambda: list(KNN_CLASSES), help="classes to transfer")
    k: int = setting(20, help="neighbours")
    camera: Optional[str] = setting("CAM_FRONT", help="camera of the overlay; none for bird's-eye only")
    max_frames: Optional[int] = setting(None, help="stop after this many frames")

    def validate(self, where: str) -> None:
        positive(self.k, subkey(where, "k"))
        if not self.classes:
            raise ConfigError(f"{subkey(where, 'classes')} must name at least one class", key=subkey(where, "classes"))
        if self.max_frames is not None:
            at_least(self.max_frames, 2, subkey(where, "max_frames"))


@dataclass(frozen=True)
class SimilarityConfig(ConfigBase):
    """``slidr similarity``: similarity maps of a query point's 3D feature with the 2D and 3D features."""

    pretrained: str = setting(help="exported pretraining (pretrained.pt)")
    index: Optional[str] = setting(None, help="dataset index (default: the pretraining's data.index)")
    sample: int = setting(0, help="position of the sample in the index")
    camera: Optional[str] = setting(None, help="camera channel (default: the pretraining's first camera)")
    point: Optional[int] = setting(None, help="query: the I-th point among those that project into the image")
    pixel: Optional[list[int]] = setting(
        None, help="query: the projected point nearest to this pixel (of the network's input image)")
    query_class: Optional[str] = setting(None, help="query: a random point of this class")
    seed: int = setting(0, help="seed of random queries")

    def validate(self, where: str) -> None:
        at_least(self.sample, 0, subkey(where, "sample"))
        at_least(self.seed, 0, subkey(where, "seed"))
        if self.point is not None:
            at_least(self.point, 0, subkey(where, "point"))
        if self.pixel is not None:
            if len(self.pixel) != 2 or min(self.pixel) < 0:
                raise ConfigError(f"{subkey(where, 'pixel')} must be [row, col], each >= 0, got {self.pixel}",
                                  key=subkey(where, "pixel"))
        given = [name for name in ("point", "pixel", "query_class") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError(f"give at most one query, got {' and '.join(subkey(where, n) for n in given)}",
                              key=subkey(where, given[-1]))


# --------------------------------------------------------------------------------------------------------------
# Packaged configs.
# --------------------------------------------------------------------------------------------------------------

CONFIG_GROUPS: dict[str, type] = {"pretrain": PretrainConfig, "downstream": DownstreamConfig, "demo": DemoConfig,
                                  "detection": DetectionConfig, "paper": PaperCellsConfig,
                                  "ablation": AblationConfig}


def packaged_config_dir() -> Path:
    """The folder of the configs shipped with slidr (``slidr/configs``, found through ``importlib.resources``)."""
    folder = importlib.resources.files("slidr").joinpath("configs")
    if not isinstance(folder, Path) or not folder.is_dir():
        raise ConfigError(f"the packaged configs are not readable as files here ({folder}); reinstall slidr "
                          f"unzipped (pip installs it so)")
    return folder


def packaged_configs() -> list[str]:
    """Names of the packaged configs relative to :func:`packaged_config_dir`, e.g. ``pretrain/demo_cpu.yaml``."""
    root = packaged_config_dir()
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.yaml"))


def packaged_config_class(name: str) -> type:
    """The config class of packaged config ``name`` (from its folder: pretrain, downstream, demo)."""
    group = name.split("/", 1)[0]
    if group not in CONFIG_GROUPS:
        raise ConfigError(f"{name}: packaged configs live in {', '.join(CONFIG_GROUPS)}/")
    return CONFIG_GROUPS[group]


def resolve_config_path(name: str | Path, relative_to: Optional[Path] = None) -> Path:
    """The config file that ``name`` designates.

    In order: ``name`` as a path (beside ``relative_to`` first when given, then from the working directory); the
    packaged config of that name, with or without a leading ``configs/`` and the ``.yaml`` suffix
    (``configs/pretrain/slidr_minkunet.yaml``, ``pretrain/slidr_minkunet``); a packaged config whose file name
    is ``name`` (``slidr_minkunet``).

    Raises
    ------
    ConfigError
        Nothing matches, or a bare name matches several packaged configs.
    """
    path = Path(name).expanduser()
    candidates = [relative_to / path] if relative_to is not None and not path.is_absolute() else []
    candidates.append(path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not path.is_absolute():
        root = packaged_config_dir()
        parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
        stem = Path(*parts) if parts else None
        if stem is not None:
            for candidate in (root / stem, root / stem.with_name(stem.name + ".yaml")):
                if candidate.is_file():
                    return candidate
            if len(parts) == 1:
                wanted = parts[0] if parts[0].endswith(".yaml") else parts[0] + ".yaml"
                matches = sorted(root.rglob(wanted))
                if len(matches) == 1:
                    return matches[0]
                if len(matches) > 1:
                    listed = ", ".join(match.relative_to(root).as_posix() for match in matches)
                    raise ConfigError(f"config name {name} is ambiguous: {listed}")
    raise ConfigError(f"config file {name} does not exist (nor a packaged config of that name: "
                      f"{', '.join(packaged_configs())})")


# --------------------------------------------------------------------------------------------------------------
# Machinery.
# --------------------------------------------------------------------------------------------------------------

_NULL_TEXTS = ("", "~", "null", "Null", "NULL")


class RawText(str):
    """A value typed on the command line: read according to the type of the setting it is given to."""


@dataclass(frozen=True)
class Override:
    """One setting given on the command line: dotted ``key`` (``*`` matches every entry of a mapping), its
    ``value`` (a :class:`RawText` is read according to the setting's type) and ``source``, the text that
    error messages quote (``trainer.epochs=0``, ``--workers 0``)."""

    key: str
    value: Any
    source: str


class _FromFile(dict):
    """A mapping read from a config file: the whole section, laid over the class defaults (not the field's)."""


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str | Override] = ()) -> T:
    """Build a ``cls`` instance from an optional YAML file and overrides (``dotted.key=value`` text or
    :class:`Override`), validated; errors name the key and where its value came from."""
    data: dict = {}
    resolved: Optional[Path] = None
    if path is not None:
        resolved = resolve_config_path(path)
        data = _expand_references(cls, _read_mapping(resolved), resolved.parent, {resolved.resolve()})
    parsed = [_parse_override(item) if isinstance(item, str) else item for item in overrides]
    try:
        data = _apply_overrides(cls, data, parsed)
        return from_dict(cls, data, where="")
    except ConfigError as error:
        raise _attributed(error, parsed, resolved) from None


def with_overrides(config: T, overrides: typing.Sequence[str | Override]) -> T:
    """``config`` with dotted ``KEY=VALUE`` overrides applied as on the command line (text read by the setting's
    type, a partial section laid over ``config``'s), validated; errors name the key and the override."""
    if not overrides:
        return config
    parsed = [_parse_override(item) if isinstance(item, str) else item for item in overrides]
    cls = type(config)
    try:
        return from_dict(cls, _apply_overrides(cls, to_dict(config), parsed), where="")
    except ConfigError as error:
        raise _attributed(error, parsed, None) from None


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` set (value parsed as YAML)."""
    data = _deep_copy(data)
    for item in overrides:
        parsed = _parse_override(item)
        node = data
        parts = parsed.key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section", key=parsed.key)
            node = child
        node[parts[-1]] = _yaml_value(parsed.value)
    return data


def from_dict(cls: type[T], data: dict, where: str = "config", base: Any = None) -> T:
    """Recursively build dataclass ``cls`` from a mapping, checking keys, types and each ``validate``.

    Keys absent from ``data`` take their value from ``base`` (an instance of ``cls``) when given, else the
    field defaults.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping for {cls.__name__}, got "
                          f"{type(data).__name__}", key=where or None)
    if isinstance(data, _FromFile):
        base = None
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where + ': ' if where else ''}unknown key {key!r}{hint}; valid keys: "
                          f"{', '.join(fields)}", key=subkey(where, str(key)))
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            section_base = getattr(base, name) if base is not None else _field_default(f)
            kwargs[name] = _coerce(data[name], hints[name], subkey(where, name), section_base)
        elif base is not None:
            kwargs[name] = getattr(base, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{subkey(where, name)} is required", key=subkey(where, name), missing=True)
    token = _VALIDATING_AT.set(where)
    try:
        instance = cls(**kwargs)
    finally:
        _VALIDATING_AT.reset(token)
    if not isinstance(instance, ConfigBase):
        _validate(instance, where)
    return instance


def with_changes(config: T, changes: Mapping[str, Any]) -> T:
    """A copy of ``config`` with the dotted keys of ``changes`` set (``{"data.index": path}``), validated."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = with_changes(getattr(config, head), sub)
    return dataclasses.replace(config, **direct)  # type: ignore[type-var]


UNRECORDED_POINT_FEATURES = "unit"  # what files of slidr 0.1 (no data.point_features in their config) were trained on


def exported_pretrain_config(config: Mapping[str, Any], where: str = "config") -> PretrainConfig:
    """The :class:`PretrainConfig` recorded in an exported pretraining file (``pretrained.pt``'s ``config``).

    Files of slidr 0.1 do not record ``data.point_features``; their networks were trained on ``unit`` features,
    which this config then says (so that analyses feed the network what it was trained on).
    """
    cfg = from_dict(PretrainConfig, dict(config), where=where)
    data = config.get("data")
    if isinstance(data, Mapping) and "point_features" not in data:
        cfg = with_changes(cfg, {"data.point_features": UNRECORDED_POINT_FEATURES})
    return cfg


def to_dict(config: Any) -> dict:
    """Plain-data form of a config (what ``save_config`` writes)."""
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    """The resolved config as YAML text; loading it back gives an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from slidr.utils.io import atomic_write_text

    atomic_write_text(Path(path), dump_config(config))


def parse_shard(text: str, key: str = "shard") -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n (shards are numbered from 0)."""
    try:
        index_text, count_text = text.split("/")
        shard_index, shard_count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"{key} must look like i/n (e.g. 0/4), got {text!r}", key=key) from None
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ConfigError(f"{key} {text}: need n >= 1 and 0 <= i < n (shards are numbered from 0)", key=key)
    return shard_index, shard_count


# --- internals -------------------------------------------------------------------------------------------------


def _read_mapping(path: Path) -> _FromFile:
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return _FromFile(loaded or {})


def _section_class(hint: Any) -> Optional[type]:
    """The config class of a setting's type (``X`` or ``Optional[X]``), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _mapping_values(hint: Any) -> Any:
    """The value type of a ``dict[str, X]`` setting, else None."""
    if typing.get_origin(hint) is dict:
        args = typing.get_args(hint)
        return args[1] if len(args) == 2 else Any
    return None


def _field_hint(cls: Optional[type], part: str) -> Any:
    if cls is None:
        return None
    try:
        return typing.get_type_hints(cls).get(part)
    except Exception:  # an unresolvable annotation: no typed help, from_dict reports the key
        return None


def _expand_references(hint: Any, value: Any, base_dir: Optional[Path], seen: set) -> Any:
    """Replace file names given for config-class settings by the files' mappings (recursively)."""
    section = _section_class(hint)
    if section is not None and isinstance(value, str):
        path = resolve_config_path(value, base_dir)
        if path.resolve() in seen:
            raise ConfigError(f"config file {path} refers to itself")
        return _expand_references(section, _read_mapping(path), path.parent, seen | {path.resolve()})
    if section is not None and isinstance(value, dict):
        expanded = type(value)(value)
        for key, item in value.items():
            item_hint = _field_hint(section, key)
            if item_hint is not None:
                expanded[key] = _expand_references(item_hint, item, base_dir, seen)
        return expanded
    values_hint = _mapping_values(hint)
    if values_hint is not None and isinstance(value, dict):
        return type(value)({key: _expand_references(values_hint, item, base_dir, seen) for key, item in value.items()})
    return value


def _parse_override(item: str) -> Override:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like dotted.key=value")
    return Override(key.strip(), RawText(raw), item)


def _apply_overrides(cls: type, data: dict, overrides: typing.Sequence[Override]) -> dict:
    data = _deep_copy(data)
    for override in overrides:
        _set(data, cls, override.key.split("."), override, 0)
    return data


def _set(node: dict, owner: Any, parts: list[str], override: Override, depth: int) -> None:
    """Set ``override`` at ``parts[depth:]`` below ``node``, whose type is ``owner`` (a config class or a mapping
    type)."""
    part = parts[depth]
    values_hint = _mapping_values(owner)
    if part == "*":
        if values_hint is None or not node:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"{override.source}: '*' needs a mapping with entries at {where}", key=override.key)
        for key in node:
            _set(node, owner, parts[:depth] + [key] + parts[depth + 1:], override, depth)
        return
    hint = values_hint if values_hint is not None else _field_hint(_section_class(owner) or owner, part)
    if depth == len(parts) - 1:
        value = override.value
        if (_section_class(hint) is not None or _mapping_values(hint) is not None) and isinstance(value, str):
            # a section given whole on the command line: inline YAML ({epochs: 3}) or the name of a config file
            value = _yaml_value(value) if isinstance(value, RawText) else value
            value = _expand_references(hint, value, None, set())
        node[part] = value
        return
    child = node.get(part)
    if child is None:
        child = node[part] = _seed(owner, part, hint)
    if not isinstance(child, dict):
        raise ConfigError(f"override {override.source!r}: {part!r} is not a section", key=override.key)
    _set(child, hint, parts, override, depth + 1)


def _seed(owner: Any, part: str, hint: Any) -> dict:
    """Starting content of a section an override goes into: for a mapping of configs, the default entries."""
    owner_cls = _section_class(owner)
    if _mapping_values(hint) is None or owner_cls is None:
        return {}
    f = next((f for f in dataclasses.fields(owner_cls) if f.name == part), None)
    default = _field_default(f) if f is not None else None
    if not isinstance(default, dict):
        return {}
    return {key: _FromFile(to_dict(value)) if dataclasses.is_dataclass(value) else _deep_copy(value)
            for key, value in default.items()}


def _attributed(error: ConfigError, overrides: typing.Sequence[Override], path: Optional[Path]) -> ConfigError:
    """``error`` prefixed with where the offending value came from: an override, else the file."""
    source = None
    if error.key is not None:
        for override in reversed(overrides):
            if _key_matches(override.key, error.key):
                source = override.source
                break
    if source is None and path is not None and not error.missing:
        source = str(path)
    message = f"{source}: {error}" if source and not str(error).startswith(source) else str(error)
    return ConfigError(message, key=error.key, missing=error.missing)


def _key_matches(pattern: str, key: str) -> bool:
    """Whether ``key`` (an error's key) lies at or below override key ``pattern`` (``*`` matches one part)."""
    wanted = pattern.split(".")
    parts = key.replace("[", ".[").split(".")
    if len(parts) < len(wanted):
        return False
    return all(w == "*" or w == p for w, p in zip(wanted, parts))


def _field_default(f: Any) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _validate(instance: Any, where: str) -> None:
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate(where)


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return str(text)


def _read_text(value: RawText, hint: Any) -> Any:
    """A command-line text read for a setting of type ``hint``: strings stay as typed, the rest is YAML."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if type(None) in args and value in _NULL_TEXTS:
        return None
    for arg in args:
        if arg is str or (typing.get_origin(arg) is Literal and value in typing.get_args(arg)):
            return str(value)
    return _yaml_value(value)


def _coerce(value: Any, hint: Any, where: str, base: Any = None) -> Any:
    if isinstance(value, RawText):
        value = _read_text(value, hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Annotated:  # a base type plus checks, e.g. RegistryName: the value names a registered entry
        value = _coerce(value, args[0], where)
        for check in hint.__metadata__:
            if hasattr(check, "check"):
                value = check.check(value, where)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, base)
            except ConfigError as error:
                errors.append(error)
        raise errors[0] if errors else ConfigError(f"{where}: invalid value {value!r}", key=where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}", key=where)
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, str):
            value = _expand_references(hint, value, None, set())
        return from_dict(hint, value, where, base if isinstance(base, hint) else None)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}", key=where)
        item_hint = args[0] if args else Any
        return [_coerce(item, item_hint, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}", key=where)
        values_hint = args[1] if len(args) == 2 else Any
        return {key: _coerce(item, values_hint, subkey(where, str(key))) for key, item in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}", key=where)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}", key=where)
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}", key=where)
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}", key=where)
        return str(value)
    return value


def subkey(where: str, name: str) -> str:
    """The dotted key of setting ``name`` of the section at ``where`` ("" at the top)."""
    return f"{where}.{name}" if where else name


def positive(value: float, key: str, note: str = "") -> None:
    """Refuse ``value`` unless > 0 (for ``validate`` methods; ``key`` names the setting)."""
    if not value > 0:
        raise ConfigError(f"{key} must be > 0{' ' + note if note else ''}, got {value}", key=key)


def at_least(value: float, low: float, key: str) -> None:
    """Refuse ``value`` unless >= ``low`` (for ``validate`` methods; ``key`` names the setting)."""
    if not value >= low:
        raise ConfigError(f"{key} must be >= {low}, got {value}", key=key)




def _in_unit_interval(value: float, key: str) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{key} must be in [0, 1], got {value}", key=key)


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return type(data)({key: _deep_copy(value) for key, value in data.items()})
    if isinstance(data, list):
        return [_deep_copy(value) for value in data]
    return data
