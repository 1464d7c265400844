"""Run start and the Lightning trainers: one factory for every training run, one for evaluation-only runs.

A training run (:func:`start_run`, then :func:`lightning_trainer`) has its run folder (the resolved
``config.yaml``, ``checkpoints/`` with atomic epoch checkpoints), its CPU threads and global seeds set before the
model is built, and the devices, precision and distribution of ``trainer.*`` (CPU, one GPU, several GPUs or
nodes through DDP, mixed precision on GPU). The data samplers are the engine's own
(``use_distributed_sampler=False``): see :mod:`slidr.engine.data`.

What a run prints: one line per real event. Lightning's own notices (tips, device summaries, the "modules in
eval mode" check, which the frozen image teacher always triggers) are silenced (:func:`quiet_lightning`); after
the first steps :class:`TimeEstimate` says how long a step, an epoch and the run will take, and a config sized
for a GPU (``trainer.intended_accelerator: gpu``) says so when it runs on a CPU.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, cast

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.loggers import CSVLogger

from slidr.config import TrainerConfig
from slidr.engine.checkpoint import CHECKPOINT_DIR, AtomicCheckpointIO, EpochCheckpoint, start_run_folder
from slidr.engine.module import PretrainModule
from slidr.engine.record import SUMMARY_NAME, TrainingRecord
from slidr.utils.log import logger, warn_once

CPU_CONFIGS = "pretrain/demo_cpu.yaml, downstream/probe_demo_cpu.yaml, downstream/finetune_demo_cpu.yaml"


def quiet_lightning() -> None:
    """Silence what Lightning prints that a slidr user cannot act on (idempotent).

    Its info messages (device summary, tips, "`Trainer.fit` stopped"), the warning about modules in eval mode
    (the frozen image teacher and a probe's backbone are in eval mode on purpose), the one about a logging
    interval longer than an epoch (short runs), the one about a skipped step (``training_step`` returning None,
    which slidr does on purpose and counts) and torch's ``LeafSpec`` deprecation raised inside Lightning.
    Lightning's warnings and errors are still shown.
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # a batch without anything to learn from is skipped on purpose (and counted: summary.json skipped_batches)
    warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`")


class RunLogger(CSVLogger):
    """Lightning's CSV logger, leaving no empty log folder behind (a run shorter than the logging interval)."""

    def finalize(self, status: str) -> None:
        super().finalize(status)
        folder = Path(self.log_dir)
        for candidate in (folder, folder.parent):
            try:
                if candidate.is_dir() and not any(candidate.iterdir()):
                    candidate.rmdir()
            except OSError:
                break


def _duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it readable: 12.3 s, 4.5 min, 2.1 h, 3.4 days."""
    if not math.isfinite(seconds):
        return "an unknown time"
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _steps(count: float) -> str:
    return f"{int(count)} step{'' if int(count) == 1 else 's'}"


class TimeEstimate(L.Callback):
    """One line after the first steps (rank 0): time per step, per epoch and for the rest of the run.

    Said after ``min_steps`` steps or ``min_seconds`` seconds, whichever comes first (a step of several minutes
    is reported after itself). The first step (data loader start-up) is left out of the rate when others exist.
    """

    def __init__(self, min_steps: int = 3, min_seconds: float = 20.0) -> None:
        self.min_steps = min_steps
        self.min_seconds = min_seconds
        self.said: Optional[str] = None
        self._start = 0.0
        self._first_end: Optional[float] = None
        self._steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._first_end = None
        self._steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.said is not None:
            return
        now = time.perf_counter()
        self._steps += 1
        if self._steps == 1:
            self._first_end = now
        if self._steps < self.min_steps and now - self._start < self.min_seconds:
            return
        if self._steps > 1 and self._first_end is not None:
            per_step = (now - self._first_end) / (self._steps - 1)
        else:
            per_step = now - self._start
        per_epoch = trainer.num_training_batches
        total = math.inf
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(per_epoch):
            total = trainer.max_epochs * per_epoch
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        remaining = total - trainer.global_step
        epoch_text = (f", {_duration(per_step * per_epoch)} per epoch ({_steps(per_epoch)})"
                      if math.isfinite(per_epoch) else "")
        rest = (f", about {_duration(per_step * remaining)} for the remaining {_steps(remaining)}"
                if math.isfinite(remaining) and remaining > 0 else "")
        self.said = f"{_duration(per_step)} per step{epoch_text}{rest}"
        if trainer.is_global_zero:
            logger.info("time: %s", self.said)


def warn_if_sized_for_another_device(trainer_cfg: TrainerConfig, trainer: L.Trainer) -> None:
    """Say once when a config meant for a GPU (``trainer.intended_accelerator: gpu``) runs on the CPU."""
    if trainer_cfg.intended_accelerator == "gpu" and isinstance(trainer.accelerator, CPUAccelerator):
        warn_once("this config is sized for a GPU (trainer.intended_accelerator: gpu) and runs on the CPU here: "
                  "steps may take minutes each (the time per epoch follows after the first steps); the CPU-sized "
                  f"configs are {CPU_CONFIGS}")


def start_run(out_dir: str | Path, cfg: Any, resume: bool, allow_changes: bool = False) -> Optional[Path]:
    """Create the run folder (``config.yaml``), set CPU threads and seed every generator; returns the checkpoint
    to resume from (None for a fresh start).

    ``cfg`` is a command's config with a ``trainer`` section (``seed``, ``num_threads``). Resuming with settings
    that differ from the run's ``config.yaml`` is refused unless ``allow_changes`` (which records them; see
    :func:`slidr.engine.checkpoint.start_run_folder`).

    Raises
    ------
    SlidrError
        ``out_dir`` already holds checkpoints and ``resume`` is False.
    ConfigError
        Resuming with other settings than the run's, without ``allow_changes``.
    """
    ckpt_path = start_run_folder(out_dir, cfg, resume, allow_changes)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    return ckpt_path


def lightning_trainer(trainer_cfg: TrainerConfig, out_dir: Path, loggers: Any, callbacks: Sequence[L.Callback],
                      enable_progress_bar: bool = True, val_every_n_epochs: int = 0) -> L.Trainer:
    """The Lightning trainer of a training run with atomic epoch checkpoints in ``out_dir``.

    ``val_every_n_epochs`` > 0 runs the module's validation every that many epochs (0: never during training).
    A :class:`TimeEstimate` is added to the callbacks.
    """
    quiet_lightning()
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=trainer_cfg.strategy,
        precision=cast(Any, trainer_cfg.precision),  # a name TrainerConfig checked; lightning types it a Literal
        max_epochs=trainer_cfg.epochs,
        max_steps=trainer_cfg.max_steps,
        limit_train_batches=trainer_cfg.limit_train_batches,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        callbacks=[EpochCheckpoint(out_dir / CHECKPOINT_DIR, trainer_cfg.keep_checkpoints), TimeEstimate(),
                   *callbacks],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=max(1, val_every_n_epochs),
        limit_val_batches=None if val_every_n_epochs > 0 else 0,  # None: every validation batch
    )
    warn_if_sized_for_another_device(trainer_cfg, trainer)
    return trainer


def evaluation_trainer(trainer_cfg: TrainerConfig, enable_progress_bar: bool = True) -> L.Trainer:
    """A Lightning trainer for ``trainer.test`` only: the devices of ``trainer_cfg``, no logs, no checkpoints."""
    quiet_lightning()
    return L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=trainer_cfg.strategy,
        precision=cast(Any, trainer_cfg.precision),
        logger=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )


def pretraining_trainer(module: PretrainModule, out_dir: Path, callbacks: Sequence[L.Callback] = (),
                        enable_progress_bar: bool = True) -> L.Trainer:
    """The trainer of a pretraining run: CSV and TensorBoard logs, :class:`TrainingRecord`, the method's step
    budget (:meth:`PretrainModule.planned_steps`) when it has one."""
    from lightning.pytorch.loggers import TensorBoardLogger

    # one version folder per attempt: a resumed run appends a new CSV instead of rewriting the previous one
    loggers = [RunLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")]
    trainer = lightning_trainer(module.cfg.trainer, out_dir, loggers, [TrainingRecord(out_dir), *callbacks],
                                enable_progress_bar)
    steps = module.planned_steps(trainer.world_size)
    if steps is not None:
        # the step budget lives in the epoch loop (fit_loop.max_steps is a read-only view of it)
        trainer.fit_loop.epoch_loop.max_steps = steps
        trainer.fit_loop.max_epochs = -1
    return trainer


def fit_pretraining(module: PretrainModule, out_dir: str | Path, ckpt_path: Optional[Path] = None,
                    callbacks: Sequence[L.Callback] = (), enable_progress_bar: bool = True
                    ) -> Optional[dict[str, Any]]:
    """Train ``module`` into the run folder ``out_dir`` (from :func:`start_run`); returns the summary on rank 0.

    Writes checkpoints, logs, ``pretrained.pt``, ``summary.json`` and ``loss_curve.png`` (see
    :mod:`slidr.engine.record`). Returns None on processes other than rank 0.
    """
    out_dir = Path(out_dir)
    trainer = pretraining_trainer(module, out_dir, callbacks, enable_progress_bar)
    trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
    if not trainer.is_global_zero:
        return None
    return json.loads((out_dir / SUMMARY_NAME).read_text())
