"""The base LightningModule of pretraining methods: one training step, skipped batches, bad losses, DDP agreement.

A method subclasses :class:`PretrainModule` and provides its loss (:meth:`~PretrainModule.compute_loss`) and its
training data (:meth:`~PretrainModule.build_train_dataset`); this class does the rest: the replayable loader
(:func:`slidr.engine.data.replayable_loader`), the optimizer and schedule of ``cfg.optim``
(:func:`slidr.engine.optim.configure_optimization`), the seed before every batch, logging, and the two decisions
that must be agreed across processes.

Exact resumption. Lightning restores weights, optimizer, scheduler and loop counters; the data order and the
augmentations are functions of (seed, epoch) (:mod:`slidr.engine.data`), and the model-side randomness (e.g.
PPKT's subset of pairs) comes from a seed set before every batch from (seed, epoch, batch, rank).

Skipped batches and bad losses. A batch without anything to learn from (``compute_loss`` returns None) is skipped
(no optimizer step) and counted. A non-finite loss stops training with :class:`~slidr.errors.SlidrError` naming
the last good checkpoint; nothing is written after the bad step. Under DDP both decisions are agreed across
processes (one small all-reduce), so no process waits for a gradient exchange that another skipped.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, cast

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from slidr.config import PretrainConfig
from slidr.engine.checkpoint import EpochCheckpoint
from slidr.engine.data import derive_seed, evaluation_loader, replayable_loader
from slidr.engine.distributed import is_distributed
from slidr.engine.optim import configure_optimization
from slidr.errors import SlidrError


class PretrainModule(L.LightningModule):
    """Training machinery shared by every pretraining method.

    Subclasses implement :meth:`compute_loss` (``batch -> (loss or None, stats)``, None when the batch has
    nothing to learn from) and :meth:`build_train_dataset`, and name their 3D network ``model_points``
    (the exported weights) and, if any, their trainable image head ``model_images.head``. A method is such a
    subclass registered by name in :data:`slidr.methods.METHODS`; it is built as ``cls(cfg, **kwargs)``.

    Parameters
    ----------
    cfg : PretrainConfig
        The resolved configuration.
    dataset : Dataset, optional
        Training samples; default: built from ``cfg`` when the trainer asks for data.
    collate : callable, optional
        Batch builder for ``dataset``.
    """

    #: whether the loss reads the 3D network's output (``model_points(x)``, through its last layer ``final``); False
    #: for methods whose loss reads ``forward_features`` through a head of their own (ScaLR, DepthContrast), whose
    #: ``final`` stays at its initialisation: analyses of the export (``slidr knn``) then read ``forward_features``,
    #: the features the downstream tasks use
    trains_output: bool = True

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

    def teacher_record(self) -> Optional[dict[str, Any]]:
        """The image teacher for the run's summary (:func:`slidr.models.image.describe_teacher`); None without one."""
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
        return self._dataset, cast(Callable, self._collate)  # given with the dataset, or built with it

    def train_dataloader(self) -> DataLoader:
        dataset, collate = self.train_dataset()
        return replayable_loader(dataset, collate, self.cfg.trainer, self.trainer, self.cfg.data.num_workers)

    # ---- optimisation --------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        return configure_optimization(self.trainable_parameters(), self.cfg.optim, self.trainer)

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
            callback = cast(Optional[EpochCheckpoint], self.trainer.checkpoint_callback)  # lightning_trainer's
            last = callback.last_path if callback else None
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
        if is_distributed():
            dist.all_reduce(flags)
        no_pairs, bad, total = flags.tolist()
        return no_pairs > 0, bad > 0, total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["slidr_skipped_batches"] = self.skipped_batches

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_batches = int(checkpoint.get("slidr_skipped_batches", 0))

    def on_train_epoch_start(self) -> None:
        self._step_started = None


class EvaluatedTrainingModule(L.LightningModule):
    """What the supervised modules (segmentation probe / fine-tuning, detection) share: the per-epoch training
    losses kept in checkpoints (so a resumed run reports all of them), and the evaluation set served to Lightning's
    validation and test loops on the trainer's processes.

    Subclasses set ``cfg`` (with ``trainer.batch_size`` and ``data.num_workers``), ``eval_set``, ``eval_collate``
    and ``epoch_losses`` in their ``__init__``; ``kind`` names them in errors.
    """

    kind = "training"
    cfg: Any
    eval_set: Optional[Dataset]
    eval_collate: Optional[Callable]
    epoch_losses: list[float]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["slidr_epoch_losses"] = list(self.epoch_losses)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_losses = list(checkpoint.get("slidr_epoch_losses", []))

    def _evaluation_loader(self) -> DataLoader:
        if self.eval_set is None or self.eval_collate is None:
            raise SlidrError(f"this {self.kind} module has no evaluation set")
        return evaluation_loader(self.eval_set, self.eval_collate, self.cfg.trainer.batch_size, self.trainer,
                                 self.cfg.data.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader()

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader()
