"""Self-supervised pretraining with Lightning: SLidR and PPKT modules, the shared training machinery and the runner.

One runner (:func:`run_pretraining`) serves every method: it builds the method's LightningModule, a Lightning
``Trainer`` (CPU, one GPU, several GPUs or nodes through DDP, mixed precision on GPU), atomic epoch checkpoints,
CSV and TensorBoard logs, and at the end writes ``pretrained.pt``, ``summary.json`` and ``loss_curve.png``.

Exact resumption. Lightning restores weights, optimizer, scheduler and loop counters; this module makes the
rest a function of (seed, epoch, batch): the data order comes from :class:`EpochSampler` (a permutation drawn
from ``(seed, epoch)``), each sample's augmentations from a seed drawn with it (:class:`SeededDataset`), and the
model-side randomness (e.g. PPKT's subset of pairs) from a seed set before every batch. The learning rate is a
pure function of the scheduler's step count (:class:`CosineSchedule`).

Skipped batches and bad losses. A batch without point-pixel pairs is skipped (no optimizer step) and counted.
A non-finite loss stops training with :class:`~slidr.errors.SlidrError` naming the last good checkpoint; nothing
is written after the bad step. Under DDP both decisions are agreed across processes (one small all-reduce), so
no process waits for a gradient exchange that another skipped.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from slidr.config import OptimConfig, PretrainConfig, TrainerConfig
from slidr.errors import SlidrError
from slidr.methods.checkpoint import (
    CHECKPOINT_DIR,
    EXPORT_NAME,
    AtomicCheckpointIO,
    EpochCheckpoint,
    export_pretrained,
    start_run_folder,
)
from slidr.utils.io import write_json

SUMMARY_NAME = "summary.json"
CURVE_NAME = "loss_curve.png"
INITIAL_FRACTION = 0.1  # initial_loss: mean over this fraction of the first epoch's steps


# --------------------------------------------------------------------------------------------------------------
# Deterministic data order and augmentations.
# --------------------------------------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]) >> 1


class EpochSampler(Sampler):
    """Shuffled order drawn from ``(seed, epoch)``, split across processes; yields ``(index, sample_seed)``.

    Each process takes every ``world_size``-th item of the permutation (padded by wrapping so that all
    processes run the same number of steps). ``set_epoch`` is called by Lightning before every epoch.

    Parameters
    ----------
    num_items : int
        Dataset length.
    seed : int
        Run seed.
    rank, world_size : int
        This process and the number of processes.
    shuffle : bool
        False: items in order (seeds still differ per epoch).
    """

    def __init__(self, num_items: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if num_items <= 0:
            raise SlidrError("the training set is empty: no sample to pretrain on")
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_items, generator=generator) if self.shuffle else torch.arange(self.num_items)
        seeds = torch.randint(0, 2**62, (self.num_items,), generator=generator)
        total = len(self) * self.world_size
        positions = torch.arange(total) % self.num_items
        for position in positions[self.rank::self.world_size].tolist():
            yield int(order[position]), int(seeds[position])


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's global generators for the block, then restore their states."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class SeededDataset(Dataset):
    """Wrap a map-style dataset so that item ``(index, seed)`` is drawn with all generators seeded by ``seed``.

    The augmentations of a sample then depend only on (run seed, epoch, position), whichever worker loads it
    and whether or not the run was resumed.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with seeded_rngs(seed):
            return self.dataset[index]


def replayable_loader(dataset: Dataset, collate: Callable[[list], dict], trainer_cfg: TrainerConfig,
                      trainer: L.Trainer, workers: int) -> DataLoader:
    """Training loader whose order and augmentations are functions of (seed, epoch, rank): resumes replay it."""
    sampler = EpochSampler(len(dataset), trainer_cfg.seed, trainer.global_rank, trainer.world_size)
    return DataLoader(SeededDataset(dataset), batch_size=trainer_cfg.batch_size, sampler=sampler,
                      collate_fn=collate, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())


class CosineSchedule:
    """Learning-rate factor of scheduler step ``t``: cosine from 1 to ``min_factor``.

    ``steps_per_epoch`` > 0: the factor changes once per epoch (the authors' epoch-wise cosine over
    ``total`` epochs); ``steps_per_epoch`` = 0: per step over ``total`` steps (iteration-based methods).
    A picklable object (not a lambda) so that ``LambdaLR`` saves it in checkpoints.
    """

    def __init__(self, total: int, steps_per_epoch: int = 0, min_factor: float = 0.0, constant: bool = False):
        self.total = max(1, total)
        self.steps_per_epoch = steps_per_epoch
        self.min_factor = min_factor
        self.constant = constant

    def __call__(self, step: int) -> float:
        if self.constant:
            return 1.0
        progress = step // self.steps_per_epoch if self.steps_per_epoch else step
        progress = min(progress, self.total) / self.total
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------------------------
# Distributed helpers.
# --------------------------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``tensor`` (N_r, ...) of every process along dim 0; gradients flow to the local part only.

    Sizes may differ across processes (padded for the exchange). Every process gets the same order (rank 0's
    rows first). Returns the concatenation and the row offset of this process's rows; without DDP,
    ``(tensor, 0)``.
    """
    if not _distributed():
        return tensor, 0
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    rank = dist.get_rank()
    parts = [part[:n] for part, n in zip(parts, counts)]
    parts[rank] = tensor  # the local rows keep their graph
    return torch.cat(parts), sum(counts[:rank])


def gathered_info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE whose negatives are the positives of every DDP process (gradients through the local ones).

    Parameters
    ----------
    anchors, positives : (N, C) row-aligned local embeddings.
    temperature : float

    Returns
    -------
    Scalar loss; equal to :func:`slidr.methods.losses.info_nce` without DDP.
    """
    everyone, offset = gather_with_grad(positives)
    logits = anchors @ everyone.transpose(0, 1) / temperature
    target = torch.arange(anchors.shape[0], device=anchors.device) + offset
    return F.cross_entropy(logits, target)


# --------------------------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------------------------


def _to_sparse(coords: torch.Tensor, feats: torch.Tensor) -> Any:
    from slidr.models.sparse import SparseTensor

    return SparseTensor(coords, feats)


def build_optimizer(params: Sequence[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.optimizer`` (SGD with momentum and dampening, Adam or AdamW)."""
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, dampening=optim.dampening,
                               weight_decay=optim.weight_decay)
    if optim.optimizer == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)


class PretrainModule(L.LightningModule):
    """Training machinery shared by every pretraining method.

    Subclasses implement :meth:`compute_loss` (``batch -> (loss or None, stats)``, None when the batch has
    nothing to learn from) and :meth:`build_train_dataset`, and name their 3D network ``model_points``
    (the exported weights) and, if any, their trainable image head ``model_images.head``.

    Parameters
    ----------
    cfg : PretrainConfig
        The resolved configuration.
    dataset : Dataset, optional
        Training samples; default: built from ``cfg`` when the trainer asks for data.
    collate : callable, optional
        Batch builder for ``dataset``.
    """

    def __init__(self, cfg: PretrainConfig, dataset: Optional[Dataset] = None,
                 collate: Optional[Callable] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._dataset = dataset
        self._collate = collate
        self.skipped_batches = 0
        self.stopped_on_bad_loss = False
        self.batch_skipped = False
        self.last_loss = float("nan")  # mean over processes of the last step's loss
        self._step_started: Optional[float] = None

    # ---- what a method provides -----------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[Optional[torch.Tensor], dict[str, float]]:
        raise NotImplementedError

    def build_train_dataset(self) -> tuple[Dataset, Callable]:
        raise NotImplementedError

    def images_head(self) -> Optional[torch.nn.Module]:
        """The trainable image head exported with the 3D network (None for methods without one)."""
        return None

    def images_encoder_to_export(self) -> Optional[torch.nn.Module]:
        """The frozen image encoder, when the export must carry it (None: rebuilt from its weights file)."""
        return None

    def scans_in_batch(self, batch: dict) -> int:
        return int(batch["batch_size"])

    def planned_steps(self, world_size: int) -> Optional[int]:
        """Iteration budget of iteration-based methods (then ``trainer.epochs`` does not limit), else None."""
        return None

    # ---- data ----------------------------------------------------------------------------------------------
    def train_dataset(self) -> tuple[Dataset, Callable]:
        if self._dataset is None:
            self._dataset, self._collate = self.build_train_dataset()
        return self._dataset, self._collate

    def train_dataloader(self) -> DataLoader:
        dataset, collate = self.train_dataset()
        return replayable_loader(dataset, collate, self.cfg.trainer, self.trainer, self.cfg.data.num_workers)

    # ---- optimisation --------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optim = self.cfg.optim
        optimizer = build_optimizer(self.trainable_parameters(), optim)
        total_steps = int(self.trainer.estimated_stepping_batches)
        if self.trainer.max_steps is not None and self.trainer.max_steps > 0:
            schedule = CosineSchedule(total_steps, 0, optim.min_lr / optim.lr, optim.scheduler == "constant")
        else:
            epochs = self.trainer.max_epochs
            schedule = CosineSchedule(epochs, max(1, total_steps // epochs), optim.min_lr / optim.lr,
                                      optim.scheduler == "constant")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- one step ------------------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # model-side randomness is a function of (seed, epoch, batch, rank): resumed runs replay it
        torch.manual_seed(derive_seed(self.cfg.trainer.seed, self.current_epoch, batch_idx, self.global_rank))

    def training_step(self, batch: dict, batch_idx: int) -> Optional[torch.Tensor]:
        now = time.perf_counter()
        step_s = now - self._step_started if self._step_started is not None else None
        self._step_started = now

        loss, stats = self.compute_loss(batch)
        no_pairs, bad_loss, loss_sum = self._agree(loss)
        if bad_loss:
            self.stopped_on_bad_loss = True
            last = self.trainer.checkpoint_callback.last_path if self.trainer.checkpoint_callback else None
            kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
            raise SlidrError(f"the loss is not finite at epoch {self.current_epoch}, batch {batch_idx} "
                             f"(learning rate too high, or broken input); training stopped, {kept}")
        self.batch_skipped = no_pairs
        if no_pairs:
            self.skipped_batches += 1
            self.log("skipped_batches", float(self.skipped_batches), on_step=True, batch_size=1)
            return None

        world = self.trainer.world_size
        batch_size = self.scans_in_batch(batch)
        self.last_loss = float(loss_sum) / world
        self.log("loss", self.last_loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=batch_size)
        if step_s:
            self.log("scans_per_s", batch_size * world / step_s, prog_bar=True, on_step=True,
                     batch_size=batch_size)
        for key, value in stats.items():
            self.log(key, float(value), on_step=True, batch_size=batch_size)
        return loss

    def _agree(self, loss: Optional[torch.Tensor]) -> tuple[bool, bool, float]:
        """(some process has no pairs, some loss is not finite, sum of the losses) agreed across processes."""
        device = self.device
        if loss is None:
            flags = torch.tensor([1.0, 0.0, 0.0], device=device)
        else:
            value = loss.detach().float()
            finite = torch.isfinite(value)
            flags = torch.stack([torch.zeros((), device=value.device), (~finite).float(),
                                 torch.where(finite, value, torch.zeros_like(value))])
        if _distributed():
            dist.all_reduce(flags)
        no_pairs, bad, total = flags.tolist()
        return no_pairs > 0, bad > 0, total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["slidr_skipped_batches"] = self.skipped_batches

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_batches = int(checkpoint.get("slidr_skipped_batches", 0))

    def on_train_epoch_start(self) -> None:
        self._step_started = None


class ImageToLidarModule(PretrainModule):
    """SLidR (superpixel-driven InfoNCE) and PPKT (point-pixel InfoNCE): 3D network distilled from images.

    Per batch: voxel features -> 3D network -> per-point features (``inverse_map``) -> features of the paired
    points; image features from the frozen encoder and the trainable head; the loss between them.

    Parameters
    ----------
    cfg : PretrainConfig
        ``cfg.method`` is "slidr" or "ppkt".
    model_points, model_images : nn.Module, optional
        The 3D network and the image teacher (``encoder`` frozen, ``head`` trainable); default: built from
        ``cfg.backbone`` and ``cfg.image``.
    dataset, collate : optional
        See :class:`PretrainModule`.
    """

    def __init__(self, cfg: PretrainConfig, model_points: Optional[torch.nn.Module] = None,
                 model_images: Optional[torch.nn.Module] = None, dataset: Optional[Dataset] = None,
                 collate: Optional[Callable] = None) -> None:
        super().__init__(cfg, dataset, collate)
        if cfg.method not in ("slidr", "ppkt"):
            raise SlidrError(f"method: {cfg.method!r} is not an image-to-lidar method (slidr, ppkt)")
        if model_points is None:
            from slidr.models.unet import build_backbone

            model_points = build_backbone(cfg.backbone)
        if model_images is None:
            from slidr.models.image import build_image_model

            model_images = build_image_model(cfg.image)
        self.model_points = model_points
        self.model_images = model_images

    def build_train_dataset(self) -> tuple[Dataset, Callable]:
        from slidr.data.datasets import PretrainDataset, collate_pretrain

        data = self.cfg.data
        return PretrainDataset(data.index, data.train_split, data, train=True), collate_pretrain

    def images_head(self) -> Optional[torch.nn.Module]:
        return self.model_images.head

    def images_encoder_to_export(self) -> Optional[torch.nn.Module]:
        # A randomly initialised teacher exists nowhere else: without it the pixel features of the export
        # (similarity maps) could not be rebuilt.
        return self.model_images.encoder if self.cfg.image.weights is None else None

    def forward_points(self, batch: dict) -> torch.Tensor:
        """Features (P, C) of the paired points."""
        voxel_features = self.model_points(_to_sparse(batch["voxel_coords"], batch["voxel_feats"]))
        return voxel_features[batch["inverse_map"][batch["pairing_points"]]]

    def forward_images(self, batch: dict) -> torch.Tensor:
        """Pixel features (B*K, C, H, W) from the frozen encoder and the trainable head."""
        return self.model_images(batch["images"])

    def loss_from_features(self, point_features: torch.Tensor, pixel_features: torch.Tensor,
                           batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss in float32 (outside autocast: the exponentials overflow in half precision).

        With ``loss.gather_negatives`` under DDP, the positives (superpixels / pixels) of every process are
        negatives of every anchor; otherwise, as the authors' release, each process contrasts its own batch.
        """
        from slidr.methods import losses

        loss_cfg = self.cfg.loss
        pairing = batch["pairing_images"]
        with torch.autocast(device_type=point_features.device.type, enabled=False):
            point_features = point_features.float()
            pixel_features = pixel_features.float()
            if self.cfg.method == "ppkt":
                image, row, col = pairing.long().unbind(1)
                at_pairs = pixel_features[image, :, row, col]
                if loss_cfg.gather_negatives and _distributed():
                    chosen = torch.randperm(len(at_pairs), device=at_pairs.device)[: loss_cfg.num_matches]
                    loss = gathered_info_nce(point_features[chosen], at_pairs[chosen], loss_cfg.temperature)
                    stats = {"pairs": len(at_pairs), "matches": len(chosen)}
                else:
                    loss, stats = losses.ppkt_infonce(point_features, at_pairs, loss_cfg.num_matches,
                                                      loss_cfg.temperature)
            else:
                superpixels = batch["superpixels"] if loss_cfg.use_superpixels else None
                if loss_cfg.gather_negatives and _distributed():
                    anchors, positives = losses.superpixel_embeddings(
                        point_features, pairing, pixel_features, superpixels, loss_cfg.renormalize_means,
                        loss_cfg.num_matches)
                    loss = gathered_info_nce(anchors, positives, loss_cfg.temperature)
                    stats = {"pairs": len(point_features), "superpixels": len(anchors)}
                else:
                    loss, stats = losses.superpixel_infonce(point_features, pairing, pixel_features, superpixels,
                                                            loss_cfg.temperature,
                                                            renormalize=loss_cfg.renormalize_means,
                                                            num_matches=loss_cfg.num_matches)
        stats = {key: float(value) for key, value in dict(stats).items() if key != "empty"}
        return loss, stats

    def compute_loss(self, batch: dict) -> tuple[Optional[torch.Tensor], dict[str, float]]:
        if batch["pairing_points"].numel() == 0:
            return None, {}
        point_features = self.forward_points(batch)
        pixel_features = self.forward_images(batch)
        loss, stats = self.loss_from_features(point_features, pixel_features, batch)
        stats.setdefault("pairs", float(batch["pairing_points"].numel()))
        return loss, stats


def build_module(cfg: PretrainConfig, **kwargs: Any) -> PretrainModule:
    """The LightningModule of ``cfg.method`` (extra keyword arguments go to its constructor)."""
    if cfg.method in ("slidr", "ppkt"):
        return ImageToLidarModule(cfg, **kwargs)
    if cfg.method == "pointcontrast":
        from slidr.methods.pointcontrast import PointContrastModule

        return PointContrastModule(cfg, **kwargs)
    if cfg.method == "depthcontrast":
        from slidr.methods.depthcontrast import DepthContrastModule

        return DepthContrastModule(cfg, **kwargs)
    raise SlidrError(f"method: unknown pretraining method {cfg.method!r}; valid: slidr, ppkt, pointcontrast, "
                     "depthcontrast")


# --------------------------------------------------------------------------------------------------------------
# Record of the run: loss history (kept across resumption), summary, exported file, loss curve.
# --------------------------------------------------------------------------------------------------------------


class TrainingRecord(L.Callback):
    """Per-step losses and training time, saved in checkpoints; on rank 0 at the end: export and summary.

    Parameters
    ----------
    out_dir : path
        The run folder.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.losses: list[list[float]] = []  # per epoch, per optimizer step
        self.train_seconds = 0.0
        self.scans = 0
        self._epoch_losses: list[float] = []
        self._epoch_started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: PretrainModule) -> None:
        self._epoch_losses = []
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.batch_skipped:
            return
        self._epoch_losses.append(pl_module.last_loss)
        self.scans += pl_module.scans_in_batch(batch) * trainer.world_size

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.losses.append(list(self._epoch_losses))
        self.train_seconds += time.perf_counter() - self._epoch_started

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "train_seconds": self.train_seconds, "scans": self.scans}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [list(epoch) for epoch in state_dict["losses"]]
        self.train_seconds = float(state_dict["train_seconds"])
        self.scans = int(state_dict["scans"])

    def summary(self, pl_module: PretrainModule, trainer: L.Trainer, checkpoint: Path) -> dict[str, Any]:
        first = next((epoch for epoch in self.losses if epoch), [])
        last = next((epoch for epoch in reversed(self.losses) if epoch), [])
        head = first[: max(1, math.ceil(INITIAL_FRACTION * len(first)))]
        return {
            "method": pl_module.cfg.method,
            "epochs": len(self.losses),
            "steps": int(trainer.global_step),
            "initial_loss": float(np.mean(head)) if head else None,
            "final_loss": float(np.mean(last)) if last else None,
            "epoch_losses": [float(np.mean(e)) if e else None for e in self.losses],
            "scans_per_s": self.scans / self.train_seconds if self.train_seconds else None,
            "train_seconds": self.train_seconds,
            "scans_seen": self.scans,
            "skipped_batches": pl_module.skipped_batches,
            "world_size": trainer.world_size,
            "checkpoint": str(checkpoint),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        exported = export_pretrained(self.out_dir / EXPORT_NAME, pl_module.model_points, pl_module.images_head(),
                                     pl_module.cfg, pl_module.cfg.method,
                                     model_images_encoder=pl_module.images_encoder_to_export())
        summary = self.summary(pl_module, trainer, exported.resolve())
        write_json(self.out_dir / SUMMARY_NAME, summary)
        plot_loss_curve(self.losses, self.out_dir / CURVE_NAME, title=f"{pl_module.cfg.method} pretraining")


def plot_loss_curve(losses: Sequence[Sequence[float]], path: Path, title: str = "") -> None:
    """Per-step loss and per-epoch mean against epochs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    xs, ys = [], []
    for epoch, values in enumerate(losses):
        xs += [epoch + (i + 0.5) / len(values) for i in range(len(values))]
        ys += list(values)
    ax.plot(xs, ys, lw=0.8, alpha=0.5, label="per step")
    means = [(e + 1, float(np.mean(v))) for e, v in enumerate(losses) if v]
    if means:
        ax.plot(*zip(*means), "o-", label="epoch mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Runner.
# --------------------------------------------------------------------------------------------------------------


def build_trainer(cfg: PretrainConfig, out_dir: Path, callbacks: Sequence[L.Callback] = (),
                  enable_progress_bar: bool = True) -> L.Trainer:
    """The Lightning trainer of a pretraining run (checkpoints, logs, devices, precision from ``cfg``)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    # one version folder per attempt: a resumed run appends a new CSV instead of rewriting the previous one
    loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")]
    return lightning_trainer(cfg.trainer, out_dir, loggers, [TrainingRecord(out_dir), *callbacks],
                             enable_progress_bar)


def lightning_trainer(trainer_cfg: TrainerConfig, out_dir: Path, loggers: Any, callbacks: Sequence[L.Callback],
                      enable_progress_bar: bool = True) -> L.Trainer:
    """A training-only Lightning trainer with atomic epoch checkpoints in ``out_dir`` (pretraining, downstream)."""
    return L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=trainer_cfg.strategy,
        precision=trainer_cfg.precision,
        max_epochs=trainer_cfg.epochs,
        max_steps=trainer_cfg.max_steps,
        limit_train_batches=trainer_cfg.limit_train_batches,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        callbacks=[EpochCheckpoint(out_dir / CHECKPOINT_DIR, trainer_cfg.keep_checkpoints), *callbacks],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def run_pretraining(cfg: PretrainConfig, out_dir: str | Path, resume: bool = False,
                    callbacks: Sequence[L.Callback] = (), enable_progress_bar: bool = True,
                    module: Optional[PretrainModule] = None, **module_kwargs: Any) -> Optional[dict[str, Any]]:
    """Pretrain according to ``cfg`` into ``out_dir``; returns the summary (on rank 0; None elsewhere).

    Parameters
    ----------
    cfg : PretrainConfig
        Resolved configuration (saved as ``out_dir/config.yaml``).
    out_dir : path
        Run folder: checkpoints, logs, ``pretrained.pt``, ``summary.json``, ``loss_curve.png``.
    resume : bool
        Continue from the newest checkpoint in ``out_dir`` (a fresh start, with a warning, if there is none).
    callbacks : sequence of Callback
        Extra Lightning callbacks.
    enable_progress_bar : bool
        Show the progress bar (loss and scans/s).
    module : PretrainModule, optional
        The module to train; default: :func:`build_module` of ``cfg`` (built after seeding).
    **module_kwargs
        Passed to :func:`build_module` (e.g. ``dataset``, ``collate``, ``model_points``).

    Raises
    ------
    SlidrError
        ``out_dir`` already holds checkpoints and ``resume`` is False; the loss became non-finite.
    """
    out_dir = Path(out_dir)
    ckpt_path = start_run_folder(out_dir, cfg, resume)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)

    if module is None:
        module = build_module(cfg, **module_kwargs)
    trainer = build_trainer(cfg, out_dir, callbacks, enable_progress_bar)
    steps = module.planned_steps(trainer.world_size)
    if steps is not None:
        trainer.fit_loop.max_steps = steps
        trainer.fit_loop.max_epochs = -1
    trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if not trainer.is_global_zero:
        return None
    return json.loads((out_dir / SUMMARY_NAME).read_text())
