"""Downstream semantic segmentation: linear probing and fine-tuning of a (pretrained) 3D backbone.

Linear probing (paper D.1, the authors' ``freeze_layers``): the pretrained 3D network is frozen, batch-norm
statistics included (it stays in eval mode, as the release's ``training_step`` keeps it), and only the point-wise
classifier, the backbone's ``final`` layer rebuilt with one output per evaluation class, is trained: a plain
linear layer on the raw 3D features, 50 epochs, lr 0.05, CE + Lovasz, with the release's rotation and flips of the
training scans (``probe_nuscenes.yaml``). Two options, off in the paper configs:

- ``cache_features``: when augmentation is off the frozen network is a fixed function of each scan, so the
  features of every training scan are computed once and the classifier is trained on them (the same
  optimisation without re-running the 3D network every epoch; the CPU demo uses it);
- ``standardize_features``: the classifier sees the frozen features standardised per channel with their training
  mean and standard deviation (MAE's linear probing with a non-affine batch norm), folded into ``final`` when
  training ends, so the saved network is the plain architecture. Without it a randomly initialised network in
  eval mode outputs features around 1e-3, on which a linear layer at lr 0.05 learns little but the class prior.

Fine-tuning: the whole network, with the classifier's learning rate (``optim.lr_head``, 2.0 in the authors'
nuScenes config) apart from the backbone's (``optim.lr``, 0.02); a randomly initialised network uses one learning
rate for everything (``lr_random_init``, the authors' 0.05). Loss: cross-entropy + Lovasz-softmax (``lovasz``).
SGD with momentum 0.9, dampening 0.1, weight decay 1e-4 and a cosine schedule over the epochs. Epochs:
``trainer.epochs: null`` (the packaged configs) takes the paper's number for the mode and label fraction
(:func:`slidr.config.downstream_epochs`: probing 50; fine-tuning 100 with 1% of the labels, 50 with 5 to 100%).

The classifier has C outputs for the C evaluation classes (no "ignore" output): voxel label ``l`` in ``1..C`` is
target ``l - 1`` and ignored voxels (label 0) are left out of both losses. Evaluation counts every original point
(voxel predictions mapped back through the inverse map), see :mod:`slidr.methods.metrics`.

Training and evaluation run on Lightning (CPU, one or several GPUs), with the engine's atomic epoch checkpoints
and resume logic (:mod:`slidr.engine`). Evaluation is the module's ``test_step`` (and ``validation_step``, every
``val_every_n_epochs`` epochs during training when set): each process evaluates its shard of the split
(:class:`slidr.engine.data.ShardSampler`) into a :class:`~slidr.methods.metrics.SegmentationConfusion` that is
summed over processes, so several processes give exactly the one-process confusion matrix. The run folder ends
with ``model.pt`` (the trained network, loadable with :func:`slidr.engine.checkpoint.load_backbone`),
``evaluation.json`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, TypeVar, cast

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slidr.config import (
    ARCHITECTURE_KEYS,
    UNRECORDED_POINT_FEATURES,
    BackboneConfig,
    DetectionConfig,
    DownstreamConfig,
    to_dict,
    with_changes,
)
from slidr.data.classes import class_names
from slidr.engine.checkpoint import check_run_folder, export_backbone, export_pretrained, load_backbone, save_atomic
from slidr.engine.data import ordered_loader, replayable_loader
from slidr.engine.distributed import is_distributed
from slidr.engine.module import EvaluatedTrainingModule
from slidr.engine.optim import configure_optimization
from slidr.engine.trainer import RunLogger, evaluation_trainer, lightning_trainer, start_run
from slidr.errors import ConfigError, SlidrError
from slidr.methods.lovasz import lovasz_softmax
from slidr.methods.metrics import (
    SegmentationConfusion,
    accuracy,
    frequency_weighted_iou,
    mean_iou,
    point_predictions,
    summarize,
)
from slidr.models import sparse_input
from slidr.utils.io import write_json
from slidr.utils.log import logger
from slidr.utils.progress import progress

if TYPE_CHECKING:
    from slidr.models.unet import SRUNet  # the backbones of BACKBONES

MODEL_NAME = "model.pt"
RunConfig = TypeVar("RunConfig", DownstreamConfig, DetectionConfig)
IGNORE_TARGET = -1


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


def resolve_backbone(cfg: DownstreamConfig | DetectionConfig, weights: Optional[str | Path] = None) -> BackboneConfig:
    """The backbone settings of a downstream (or detection) run: the config's, with ``name`` / ``in_channels``
    left unset taken from the file ``weights`` (its recorded ``backbone``), else :class:`BackboneConfig`'s defaults.

    Raises
    ------
    ConfigError
        The config names another network than the one the file holds (the message names both).
    """
    recorded = export_backbone(weights) if weights is not None else None
    chosen: dict[str, Any] = {}
    for key in ARCHITECTURE_KEYS:
        given, saved = getattr(cfg.backbone, key), (recorded or {}).get(key)
        if given is not None and saved is not None and given != saved:
            raise ConfigError(f"backbone.{key} is {given!r} but {weights} holds a network with {key} {saved!r}; "
                              f"leave backbone.{key} unset (null: the pretrained file's is used) or set "
                              f"backbone.{key}={saved}", key=f"backbone.{key}")
        if given is not None:
            chosen[key] = given
        elif saved is not None:
            chosen[key] = saved
    own = {f.name: getattr(cfg.backbone, f.name) for f in dataclasses.fields(BackboneConfig)
           if f.name not in ARCHITECTURE_KEYS}
    return BackboneConfig(**{**own, **chosen, "normalize_output": False})


def with_resolved_backbone(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the backbone's ``name`` / ``in_channels`` filled in (:func:`resolve_backbone` of
    ``cfg.pretrained``): what a run saves in its ``config.yaml``."""
    backbone = resolve_backbone(cfg, cfg.pretrained)
    return with_changes(cfg, {f"backbone.{key}": getattr(backbone, key) for key in ARCHITECTURE_KEYS})


def build_segmentation_model(cfg: DownstreamConfig, num_classes: int, weights: Optional[str] = None,
                             reset_head: bool = True) -> tuple[nn.Module, dict]:
    """The 3D backbone with a ``final`` layer of ``num_classes`` outputs, loaded from ``weights`` if given.

    Parameters
    ----------
    cfg : DownstreamConfig
        ``backbone`` (:func:`resolve_backbone`: unset name / input channels are those of ``weights``;
        ``out_channels`` is replaced by ``num_classes``, output normalisation turned off) and ``data.voxel``
        (checked against the pretraining's).
    num_classes : int
    weights : str, optional
        Exported pretraining file, a downstream ``model.pt``, or a plain state dict (``module.`` /
        ``model_points.`` prefixes stripped). None: random initialisation.
    reset_head : bool
        Re-initialise ``final`` after loading (start of training); False keeps a loaded classifier (evaluation).

    Returns
    -------
    model, info
        ``info`` is :func:`load_backbone`'s answer (or ``{"method": None}`` for random init).
    """
    from slidr.models.unet import build_backbone

    backbone_cfg = dataclasses.replace(resolve_backbone(cfg, weights), out_channels=num_classes)
    model = build_backbone(backbone_cfg)
    info: dict[str, Any] = {"method": None, "loaded": [], "skipped": []}
    if weights is not None:
        info = load_backbone(weights, model, cfg.data.voxel)
        check_point_features(weights, info.get("config"), cfg.data.point_features)
        if not reset_head and info["skipped"]:
            raise SlidrError(f"{weights} holds no classifier for {num_classes} classes "
                             f"(keys {', '.join(info['skipped'][:4])} do not fit); is it a downstream model.pt?")
    if reset_head:
        _reset_parameters(_classifier(model))
    return model, info


def check_point_features(weights: str | Path, pretrained_config: Optional[dict], convention: str) -> None:
    """Refuse a network trained on other input features than ``data.point_features`` (``convention``).

    A frozen network reads its input through batch-norm statistics of the features it was trained on: features
    of another scale or offset give other activations. Files of slidr 0.1 (no ``data.point_features`` in their
    config) were trained on ``unit`` features.

    Raises
    ------
    SlidrError
        The file's config names another convention.
    """
    if not isinstance(pretrained_config, dict) or not isinstance(pretrained_config.get("data"), dict):
        return
    trained = pretrained_config["data"].get("point_features", UNRECORDED_POINT_FEATURES)
    if trained != convention:
        raise SlidrError(f"{weights} was trained on data.point_features={trained!r} input features, this run "
                         f"feeds {convention!r}; set data.point_features={trained}")


class StandardizedLinear(nn.Module):
    """``linear((x - mean) / std)``: a probe's classifier on standardised features (see the module docstring).

    Parameters
    ----------
    linear : the classifier (the backbone's ``final``).
    mean, std : (F,) per-channel statistics of the training features.
    """

    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(self, linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)

    def folded(self) -> nn.Linear:
        """The same function as one ``nn.Linear`` on raw features."""
        folded = nn.Linear(self.linear.in_features, self.linear.out_features).to(self.mean.device)
        with torch.no_grad():
            weight = self.linear.weight / self.std
            folded.weight.copy_(weight)
            folded.bias.copy_(self.linear.bias - weight @ self.mean)
        return folded


def feature_statistics(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (F,) of feature batches (N_i, F), in float64 sums.

    Channels that never vary get std 1, so they stay finite (and constant).
    """
    total = 0
    sum_: Optional[torch.Tensor] = None
    sum_sq: Optional[torch.Tensor] = None
    for features in batches:
        features = features.double()
        sum_ = features.sum(0) if sum_ is None else sum_ + features.sum(0)
        sum_sq = (features * features).sum(0) if sum_sq is None else sum_sq + (features * features).sum(0)
        total += features.shape[0]
    if not total or sum_ is None or sum_sq is None:  # no batch (the sums are set with the first one)
        raise SlidrError("no training voxels to compute the probe's feature statistics from")
    mean = sum_ / total
    std = (sum_sq / total - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.float(), std.float()


def _reset_parameters(module: nn.Module) -> None:
    for child in module.modules():
        reset = getattr(child, "reset_parameters", None)
        if reset is not None:
            reset()


def _classifier(model: nn.Module) -> nn.Module:
    """The backbone's last layer ``final``: an ``nn.Linear`` (a :class:`StandardizedLinear` while a probe trains)."""
    return cast(nn.Module, model.final)


# --------------------------------------------------------------------------------------------------------------
# Lightning module
# --------------------------------------------------------------------------------------------------------------


class DownstreamModule(EvaluatedTrainingModule):
    """Trains a segmentation network on voxel batches or on cached features (frozen backbone), and evaluates it.

    Parameters
    ----------
    model : nn.Module
        ``model(SparseTensor) -> (V, C)``; ``model.final`` maps ``forward_features`` (V, F) to (V, C).
    cfg : DownstreamConfig
    num_classes : int
    random_init : bool
        True when no pretrained weights were loaded: one learning rate (``cfg.lr_random_init``) for all.
    train_set : Dataset, optional
        Training samples (downstream samples, or :class:`CachedFeatures`); needed to fit.
    collate : callable, optional
        Batches ``train_set`` samples.
    eval_set, eval_collate : optional
        Downstream samples (and their collate) of the split that ``validation_step`` and ``test_step`` evaluate;
        needed to validate or test.

    Attributes
    ----------
    confusion_path : Path or None
        Where ``on_test_epoch_end`` saves the test confusion matrix (see :func:`evaluate_confusion`).
    nonfinite : list of (token, count)
        After :func:`evaluate_confusion`: the evaluated scans whose files had points with NaN or infinite values
        (left out of the evaluation), with their counts, from every process.
    """

    kind = "downstream"

    def __init__(self, model: nn.Module, cfg: DownstreamConfig, num_classes: int, random_init: bool,
                 train_set: Optional[Dataset] = None, collate: Optional[Callable[[list], dict]] = None,
                 eval_set: Optional[Dataset] = None, eval_collate: Optional[Callable[[list], dict]] = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.num_classes = num_classes
        self.random_init = random_init
        self.train_set = train_set
        self.collate = collate
        self.eval_set = eval_set
        self.eval_collate = eval_collate
        self.frozen = cfg.mode == "probe"
        if self.frozen:
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(name.startswith("final."))
        self.epoch_losses: list[float] = []
        self._running: list[float] = []
        # evaluation state: not in the state dict, synchronised across processes when computed
        self.val_confusion = SegmentationConfusion(num_classes)
        self.test_confusion = SegmentationConfusion(num_classes)
        self.confusion_path: Optional[Path] = None
        self.nonfinite: list[tuple[str, int]] = []

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.frozen:
            # frozen means frozen: batch-norm running statistics must not move either (Lightning switches
            # every submodule back to train mode at the start of fitting, so this is set before every step)
            self.model.eval()

    def train_dataloader(self) -> DataLoader:
        # the data order and augmentations are functions of (seed, epoch): resumed runs replay them exactly
        if self.train_set is None or self.collate is None:
            raise SlidrError("this downstream module has no training set")
        workers = self.cfg.data.num_workers if not isinstance(self.train_set, CachedFeatures) else 0
        return replayable_loader(self.train_set, self.collate, self.cfg.trainer, self.trainer, workers)

    def forward(self, batch: dict) -> torch.Tensor:
        """Voxel class scores (V, C) of a voxel batch, or of a batch of cached ``features``."""
        if "features" in batch:
            return _classifier(self.model)(batch["features"])
        return self.model(sparse_input(batch))

    def training_step(self, batch: dict, batch_idx: int) -> Optional[torch.Tensor]:
        if "features" not in batch and len(batch["voxel_coords"]) == 0:
            return None  # every scan of the batch lost all its points (non-finite values): nothing to learn
        logits = self(batch)
        loss = segmentation_loss(logits, batch["voxel_labels"], self.cfg.lovasz)
        self._running.append(float(loss.detach()))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=int(batch["batch_size"]))
        return loss

    def on_train_epoch_end(self) -> None:
        if self._running:
            self.epoch_losses.append(float(np.mean(self._running)))
        self._running = []

    def configure_optimizers(self) -> Any:  # Lightning's optimizer-and-scheduler dict
        optim = self.cfg.optim
        head = [p for n, p in self.model.named_parameters() if p.requires_grad and n.startswith("final.")]
        body = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("final.")]
        if self.random_init and self.cfg.mode == "finetune":
            groups = [{"params": head + body, "lr": self.cfg.lr_random_init}]
        else:
            groups = [{"params": head, "lr": optim.lr_head if optim.lr_head is not None else optim.lr}]
            if body:
                groups.append({"params": body, "lr": optim.lr})
        return configure_optimization(groups, optim, self.trainer)

    # ---- evaluation (loaders: EvaluatedTrainingModule) -------------------------------------------------------
    def _evaluate_batch(self, batch: dict, metric: SegmentationConfusion) -> None:
        # every original point counts: voxel predictions go back to the points through the inverse map
        if len(batch["voxel_coords"]):  # else every scan of the batch lost all its points (non-finite values)
            logits = self.model(sparse_input(batch))
            metric.update(point_predictions(logits, batch["inverse_map"]), batch["labels"])
        if metric is self.test_confusion:
            for token, stats in zip(batch.get("tokens", ()), batch.get("sample_stats", ())):
                if int(stats.get("nonfinite_points", 0)):
                    self.nonfinite.append((str(token), int(stats["nonfinite_points"])))

    def on_validation_epoch_start(self) -> None:
        # fresh state tensors in this process: under ddp_spawn on CPU the module's tensors arrive in shared memory,
        # and metric states (not buffers, so not un-shared by Lightning) would be one sum shared by all processes
        self.val_confusion.reset()

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()  # see on_validation_epoch_start
        self.nonfinite = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.val_confusion)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch, self.test_confusion)

    def on_validation_epoch_end(self) -> None:
        confusion = self.val_confusion.compute()  # the same on every process
        self.val_confusion.reset()
        for name, score in (("val_miou", mean_iou), ("val_fwiou", frequency_weighted_iou), ("val_accuracy", accuracy)):
            value = score(confusion)
            if not np.isnan(value):  # not available (nothing labelled): not logged, as summarize reports None
                self.log(name, 100.0 * value, prog_bar=name == "val_miou", sync_dist=True)

    def on_test_epoch_end(self) -> None:
        confusion = self.test_confusion.compute().cpu()  # the same on every process
        self.test_confusion.reset()
        nonfinite = list(self.nonfinite)
        if is_distributed():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, nonfinite)
            nonfinite = [tuple(record) for part in gathered for record in part]
        if self.confusion_path is not None:
            save_atomic({"confusion": confusion, "nonfinite": [list(record) for record in nonfinite]},
                        self.confusion_path)


def evaluate_confusion(trainer: L.Trainer, module: DownstreamModule) -> torch.Tensor:
    """Run ``trainer.test`` on ``module.eval_set``; returns the (C, C) int64 confusion matrix of all processes.

    The matrix travels through a file that every process writes (the same content, atomically): a module's
    attributes set in ``ddp_spawn`` workers do not come back to the launching process. The scans with
    non-finite points come back the same way, into ``module.nonfinite``.
    """
    with tempfile.TemporaryDirectory(prefix="slidr-test-") as folder:
        module.confusion_path = Path(folder) / "confusion.pt"
        try:
            trainer.test(module, verbose=False)
            result = torch.load(module.confusion_path, map_location="cpu", weights_only=True)
        finally:
            module.confusion_path = None
    module.nonfinite = [(str(token), int(count)) for token, count in result["nonfinite"]]
    return result["confusion"]


def evaluation_result(confusion: torch.Tensor, names: Sequence[str], module: DownstreamModule, dataset: str,
                      split: str, model: str | Path) -> dict:
    """:func:`summarize`'s dict of an evaluation, with what was left out of it.

    ``nonfinite_points`` (points with NaN or infinite values, dropped from the files before evaluation) and
    ``nonfinite_scans`` (scans that had some); when there are any, one warning line gives the count and the first
    file, in split order.
    """
    evaluation = summarize(confusion, list(names))
    records = module.nonfinite
    evaluation.update(dataset=dataset, split=split, model=str(model),
                      nonfinite_points=sum(count for _, count in records), nonfinite_scans=len(records))
    if records:
        order = {token: position for position, token in enumerate(dataset_tokens(module.eval_set) or [])}
        token = min((token for token, _ in records), key=lambda t: order.get(t, len(order)))
        first = _lidar_file(module.eval_set, token) or f"sample {token}"
        logger.warning("warning: %d points with NaN or infinite values were left out of the %s evaluation (%d of "
                       "%d scans; first: %s)", evaluation["nonfinite_points"], split, len(records),
                       _length(module.eval_set) or 0, first)
    return evaluation


def dataset_tokens(dataset: Any) -> Optional[list[str]]:
    """The sample tokens of a dataset read from an index (``index`` and ``positions``), in item order; None for
    other datasets."""
    index, positions = getattr(dataset, "index", None), getattr(dataset, "positions", None)
    if index is None or positions is None:
        return None
    tokens = index.samples.column("token")
    return [str(tokens[int(position)]) for position in positions]


def tokens_digest(tokens: Optional[Sequence[str]]) -> Optional[str]:
    """SHA-1 of the sample tokens in order (one per line): two runs on the same scans have the same digest."""
    if tokens is None:
        return None
    return hashlib.sha1("\n".join(tokens).encode()).hexdigest()


def _lidar_file(dataset: Any, token: str) -> Optional[str]:
    index = getattr(dataset, "index", None)
    if index is None:
        return None
    tokens = index.samples.column("token")
    if token not in tokens:
        return None
    return str(index.resolve(index.samples[tokens.index(token)]["lidar"]))


def segmentation_loss(logits: torch.Tensor, voxel_labels: torch.Tensor, lovasz: bool) -> torch.Tensor:
    """Cross-entropy (+ Lovasz-softmax) over the labelled voxels.

    Parameters
    ----------
    logits : (V, C) class scores.
    voxel_labels : (V,) evaluation indices, 0 = ignore.
    lovasz : add the Lovasz-softmax loss.

    Returns
    -------
    scalar tensor (0 with a graph when no voxel is labelled)
    """
    targets = voxel_labels.long() - 1  # ignore (0) becomes IGNORE_TARGET
    if not (targets != IGNORE_TARGET).any():
        return logits.sum() * 0.0
    loss = nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_TARGET)
    if lovasz:
        loss = loss + lovasz_softmax(torch.softmax(logits, dim=1), targets, ignore_index=IGNORE_TARGET)
    return loss


# --------------------------------------------------------------------------------------------------------------
# Feature cache (linear probing)
# --------------------------------------------------------------------------------------------------------------


class CachedFeatures(Dataset):
    """``forward_features`` of a frozen backbone and the voxel labels of every scan of a dataset.

    Parameters
    ----------
    model : nn.Module in eval mode.
    loader : iterable of downstream batches (any batch size).
    device : where to run the backbone; features are kept on CPU.
    """

    def __init__(self, model: nn.Module, loader: Iterable[dict], device: torch.device, desc: str = "features") -> None:
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        model.eval()
        with torch.no_grad():
            for batch in progress(loader, total=_length(loader), desc=desc, unit="batch"):
                batch = move_data_to_device(batch, device)
                if len(batch["voxel_coords"]) == 0:  # scans without any finite point: no feature
                    features = torch.zeros((0, cast(nn.Linear, model.final).in_features))
                else:
                    features = cast("SRUNet", model).forward_features(sparse_input(batch)).float().cpu()
                voxel_batch = batch["voxel_coords"][:, 0].cpu()
                labels = batch["voxel_labels"].cpu()
                for b in range(int(batch["batch_size"])):
                    keep = voxel_batch == b
                    self.features.append(features[keep])
                    self.labels.append(labels[keep])

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return {"features": self.features[index], "voxel_labels": self.labels[index]}


def collate_features(samples: list[dict]) -> dict:
    """Concatenate cached scans into one batch."""
    return {"features": torch.cat([s["features"] for s in samples]),
            "voxel_labels": torch.cat([s["voxel_labels"] for s in samples]), "batch_size": len(samples)}


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------


def make_dataset(cfg: DownstreamConfig, split: str, train: bool) -> tuple[Dataset, Callable[[list], dict]]:
    """Downstream samples of ``split`` and their collate function (label fraction on training splits only).

    Raises
    ------
    DataError
        The split does not exist or has no samples, a sample has no label file.
    """
    from slidr.data.datasets import DownstreamDataset, collate_downstream

    return DownstreamDataset(cfg.data.index, split, cfg.data, train=train), collate_downstream


def run_downstream(cfg: DownstreamConfig, out: str | Path, resume: bool = False,
                   dataset_factory: Callable[..., tuple[Dataset, Callable]] = make_dataset,
                   enable_progress_bar: bool = True, allow_changes: bool = False) -> dict:
    """Train (probe or fine-tune), evaluate on ``data.val_split`` and write the run folder.

    Parameters
    ----------
    cfg : DownstreamConfig
        ``trainer.epochs`` null takes the paper's number for the mode and label fraction
        (:func:`slidr.config.downstream_epochs`).
    out : run folder (``config.yaml``, ``checkpoints/``, ``logs/``, ``model.pt``, ``evaluation.json``,
        ``summary.json``).
    resume : continue from the newest checkpoint in ``out/checkpoints``.
    dataset_factory : ``(cfg, split, train) -> (dataset, collate)`` (tests inject their own); ``train=True``
        gives the training scans the config names (``data.label_fraction`` of ``data.train_split``), with the
        augmentations of ``data.augment`` when enabled.
    enable_progress_bar : show Lightning's progress bar.
    allow_changes : resume with settings that differ from the run's ``config.yaml`` (recorded).

    Returns
    -------
    dict
        The summary (also written to ``summary.json``; empty on processes other than rank 0), with the
        evaluation under ``evaluation``. ``train_scans`` / ``train_tokens_sha1`` (and ``val_*``) say exactly
        which scans were used: a probe and a fine-tuning of one config train on the same scans.

    Raises
    ------
    SlidrError
        ``out`` already holds checkpoints and ``resume`` is False; a split is empty; the weights do not fit.
    ConfigError
        The config names another backbone than the pretrained file holds; resuming with changed settings.
    """
    start = time.perf_counter()
    out = Path(out)
    cfg = cfg.with_resolved_epochs()  # trainer.epochs null: the paper's rule (recorded in config.yaml)
    cfg = with_resolved_backbone(cfg)  # the run's config.yaml records the network it trains
    check_run_folder(out, cfg, resume, allow_changes)  # a refused resume costs nothing
    # the evaluation split first: an index that contradicts data.dataset is refused before the run folder exists
    val_set, val_collate = dataset_factory(cfg, cfg.data.val_split, False)
    resume_from = start_run(out, cfg, resume, allow_changes)

    names = class_names(cfg.data.dataset)
    num_classes = len(names)
    model, info = build_segmentation_model(cfg, num_classes, cfg.pretrained)
    random_init = cfg.pretrained is None
    logger.info("%s on %s: %s, %d classes, backbone %s", cfg.mode, cfg.data.dataset,
                f"pretrained {cfg.pretrained} ({info.get('method')})" if cfg.pretrained else "random init",
                num_classes, cfg.backbone.name)
    trainer = lightning_trainer(cfg.trainer, out, RunLogger(out, name="logs", version=""), [], enable_progress_bar,
                                val_every_n_epochs=cfg.val_every_n_epochs)
    device = trainer.strategy.root_device  # where this process trains (the feature cache is computed there)
    batch_size = cfg.trainer.batch_size

    use_cache = cfg.mode == "probe" and cfg.cache_features and not cfg.data.augment.enabled
    # the training scans the config names (label fraction included), cached or not: augmentation is off when
    # caching, so the training dataset yields each scan as it is
    train_source, collate = dataset_factory(cfg, cfg.data.train_split, True)
    train_tokens = dataset_tokens(train_source)
    train_set: Dataset = train_source
    if use_cache:
        train_set = CachedFeatures(model.to(device), ordered_loader(train_source, collate, batch_size), device,
                                   desc="frozen features")
        collate = collate_features

    standardize = cfg.mode == "probe" and cfg.standardize_features
    if standardize:
        statistics = _probe_feature_statistics(model, train_set, collate, device, batch_size)
        model.final = StandardizedLinear(cast(nn.Linear, model.final), *statistics)
    module = DownstreamModule(model, cfg, num_classes, random_init, train_set, collate, val_set, val_collate)
    train_start = time.perf_counter()
    trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None)
    train_s = time.perf_counter() - train_start

    if standardize:
        model.final = cast(StandardizedLinear, model.final).folded()
    if trainer.is_global_zero:
        export_pretrained(out / MODEL_NAME, model, None, cfg, method=cfg.mode)
    confusion = evaluate_confusion(trainer, module)  # every process takes part
    if not trainer.is_global_zero:
        return {}
    evaluation = evaluation_result(confusion, names, module, cfg.data.dataset, cfg.data.val_split, out / MODEL_NAME)
    write_json(out / "evaluation.json", evaluation)
    summary = {
        "mode": cfg.mode,
        "pretrained": cfg.pretrained,
        "pretraining_method": info.get("method"),
        "dataset": cfg.data.dataset,
        "label_fraction": cfg.data.label_fraction,
        "train_scans": len(train_set),  # type: ignore[arg-type]
        "train_tokens_sha1": tokens_digest(train_tokens),
        "val_scans": len(val_set),  # type: ignore[arg-type]
        "val_tokens_sha1": tokens_digest(dataset_tokens(val_set)),
        "epochs": cfg.trainer.epochs,
        "epoch_losses": module.epoch_losses,
        "cached_features": use_cache,
        "train_s": round(train_s, 2),
        "wall_s": round(time.perf_counter() - start, 2),
        "miou": evaluation["miou"],
        "model": str(out / MODEL_NAME),
        "evaluation": evaluation,
        "config": to_dict(cfg),
    }
    write_json(out / "summary.json", summary)
    logger.info("%s: mIoU %s on %s (%d points); results in %s", cfg.mode, format_score(evaluation["miou"]),
                cfg.data.val_split, evaluation["num_points"], out)
    return summary


def _probe_feature_statistics(model: nn.Module, train_set: Dataset, collate: Callable[[list], dict],
                              device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the frozen features over the training voxels (from the cache when there is one)."""
    if isinstance(train_set, CachedFeatures):
        return feature_statistics(train_set.features)

    def batches():
        model.to(device).eval()
        with torch.no_grad():
            for batch in progress(ordered_loader(train_set, collate, batch_size), desc="feature statistics",
                                  unit="batch"):
                if len(batch["voxel_coords"]):  # a batch of scans without finite points has no feature
                    yield model.forward_features(sparse_input(move_data_to_device(batch, device))).cpu()

    return feature_statistics(batches())


def format_score(value: Optional[float]) -> str:
    """A score for a log line: two decimals, or ``n/a`` (an undefined metric)."""
    return "n/a" if value is None else f"{value:.2f}"


def _length(loader: Any) -> Optional[int]:
    try:
        return len(loader)
    except TypeError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------------------


def load_downstream_config(path: Optional[str], overrides: list[str], mode: str,
                           pretrained: Optional[str] = None) -> DownstreamConfig:
    """The config of ``slidr probe`` / ``slidr finetune``: YAML file, dotted overrides, then the command's mode.

    ``--pretrained`` wins over ``pretrained`` in the file; ``pretrained=null`` (or ``--pretrained none``) means
    random initialisation. ``trainer.epochs`` null is resolved by the paper's rule.
    """
    from slidr.config import load_config

    cfg = load_config(DownstreamConfig, path, overrides)
    changes: dict[str, Any] = {"mode": mode}
    if pretrained is not None:
        changes["pretrained"] = None if pretrained.lower() in ("none", "null", "random") else pretrained
    return dataclasses.replace(cfg, **changes).with_resolved_epochs()


def evaluate_saved_model(model_path: str | Path, cfg: DownstreamConfig, split: str,
                         dataset_factory: Callable[..., tuple[Dataset, Callable]] = make_dataset,
                         enable_progress_bar: bool = True) -> dict:
    """Evaluate a trained segmentation network (``model.pt``) on ``split``; returns :func:`summarize`'s dict.

    Runs Lightning's test loop on the devices of ``cfg.trainer`` (several processes split the scans; the
    confusion matrix is summed over them). Every process returns the evaluation.

    Raises
    ------
    SlidrError
        The file is not a downstream model for this dataset's classes, or the split is empty.
    """
    names = class_names(cfg.data.dataset)
    dataset, collate = dataset_factory(cfg, split, False)  # first: the index is checked against data.dataset
    model, _ = build_segmentation_model(cfg, len(names), str(model_path), reset_head=False)
    module = DownstreamModule(model, cfg, len(names), random_init=False, eval_set=dataset, eval_collate=collate)
    confusion = evaluate_confusion(evaluation_trainer(cfg.trainer, enable_progress_bar), module)
    return evaluation_result(confusion, names, module, cfg.data.dataset, split, model_path)
