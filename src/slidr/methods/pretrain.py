"""``slidr pretrain``: build the registered method of ``cfg.method`` and train it with the engine.

One runner (:func:`run_pretraining`) serves every method of :data:`slidr.methods.METHODS`: it starts the run
folder (config, threads, seeds; :func:`slidr.engine.trainer.start_run`), builds the method's LightningModule,
and trains it (:func:`slidr.engine.trainer.fit_pretraining`: atomic epoch checkpoints, CSV and TensorBoard logs,
then ``pretrained.pt``, ``summary.json`` and ``loss_curve.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L

from slidr.config import PretrainConfig
from slidr.engine.module import PretrainModule
from slidr.engine.trainer import fit_pretraining, start_run
from slidr.methods import METHODS


def build_module(cfg: PretrainConfig, **kwargs: Any) -> PretrainModule:
    """The LightningModule of ``cfg.method`` (extra keyword arguments go to its constructor).

    Raises
    ------
    ConfigError
        ``cfg.method`` is not registered (the message lists the registered methods).
    """
    return METHODS.get(cfg.method, where="method")(cfg, **kwargs)


def run_pretraining(cfg: PretrainConfig, out_dir: str | Path, resume: bool = False,
                    callbacks: Sequence[L.Callback] = (), enable_progress_bar: bool = True,
                    module: Optional[PretrainModule] = None, allow_changes: bool = False,
                    **module_kwargs: Any) -> Optional[dict[str, Any]]:
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
    allow_changes : bool
        Resume with settings that differ from the run's ``config.yaml`` (recorded); otherwise refused.
    **module_kwargs
        Passed to :func:`build_module` (e.g. ``dataset``, ``collate``, ``model_points``).

    Raises
    ------
    SlidrError
        ``out_dir`` already holds checkpoints and ``resume`` is False; the loss became non-finite; resuming with
        changed settings without ``allow_changes``.
    """
    ckpt_path = start_run(out_dir, cfg, resume, allow_changes)
    if module is None:
        module = build_module(cfg, **module_kwargs)
    return fit_pretraining(module, out_dir, ckpt_path, callbacks, enable_progress_bar)
