"""The record of a pretraining run: per-step losses kept across resumption, then the export, summary and curve.

At the end of training, on rank 0, :class:`TrainingRecord` writes the run folder's ``pretrained.pt``
(:func:`slidr.engine.checkpoint.export_pretrained`), ``summary.json`` (``method``, ``epochs``, ``steps``,
``initial_loss``, ``final_loss``, ``epoch_losses``, ``scans_per_s``, ``train_seconds``, ``scans_seen``,
``skipped_batches``, ``world_size``, ``checkpoint``, ``teacher``: the image teacher of image-to-lidar methods, see
:func:`slidr.models.image.describe_teacher`, None for the others) and ``loss_curve.png``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np

from slidr.engine.checkpoint import EXPORT_NAME, export_pretrained
from slidr.engine.module import PretrainModule
from slidr.utils.io import write_json

SUMMARY_NAME = "summary.json"
CURVE_NAME = "loss_curve.png"
INITIAL_FRACTION = 0.1  # initial_loss: mean over this fraction of the first epoch's steps


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

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
            "teacher": pl_module.teacher_record(),
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
