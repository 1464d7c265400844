"""Run start and the Lightning trainers: one factory for every training run, one for evaluation-only runs.

A training run (:func:`start_run`, then :func:`lightning_trainer`) has its run folder (the resolved
``config.yaml``, ``checkpoints/`` with atomic epoch checkpoints), its CPU threads and global seeds set before the
model is built, and the devices, precision and distribution of ``trainer.*`` (CPU, one GPU, several GPUs or
nodes through DDP, mixed precision on GPU). The data samplers are the engine's own
(``use_distributed_sampler=False``): see :mod:`slidr.engine.data`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch

from slidr.config import TrainerConfig
from slidr.engine.checkpoint import CHECKPOINT_DIR, AtomicCheckpointIO, EpochCheckpoint, start_run_folder
from slidr.engine.module import PretrainModule
from slidr.engine.record import SUMMARY_NAME, TrainingRecord


def start_run(out_dir: str | Path, cfg: Any, resume: bool) -> Optional[Path]:
    """Create the run folder (``config.yaml``), set CPU threads and seed every generator; returns the checkpoint
    to resume from (None for a fresh start).

    ``cfg`` is a command's config with a ``trainer`` section (``seed``, ``num_threads``).

    Raises
    ------
    SlidrError
        ``out_dir`` already holds checkpoints and ``resume`` is False.
    """
    ckpt_path = start_run_folder(out_dir, cfg, resume)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    return ckpt_path


def lightning_trainer(trainer_cfg: TrainerConfig, out_dir: Path, loggers: Any, callbacks: Sequence[L.Callback],
                      enable_progress_bar: bool = True, val_every_n_epochs: int = 0) -> L.Trainer:
    """The Lightning trainer of a training run with atomic epoch checkpoints in ``out_dir``.

    ``val_every_n_epochs`` > 0 runs the module's validation every that many epochs (0: never during training).
    """
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
        check_val_every_n_epoch=max(1, val_every_n_epochs),
        limit_val_batches=None if val_every_n_epochs > 0 else 0,  # None: every validation batch
    )


def evaluation_trainer(trainer_cfg: TrainerConfig, enable_progress_bar: bool = True) -> L.Trainer:
    """A Lightning trainer for ``trainer.test`` only: the devices of ``trainer_cfg``, no logs, no checkpoints."""
    return L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes,
        strategy=trainer_cfg.strategy,
        precision=trainer_cfg.precision,
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
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    # one version folder per attempt: a resumed run appends a new CSV instead of rewriting the previous one
    loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")]
    trainer = lightning_trainer(module.cfg.trainer, out_dir, loggers, [TrainingRecord(out_dir), *callbacks],
                                enable_progress_bar)
    steps = module.planned_steps(trainer.world_size)
    if steps is not None:
        trainer.fit_loop.max_steps = steps
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
