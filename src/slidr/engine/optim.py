"""Optimizers by name and the learning-rate schedule.

:data:`OPTIMIZERS` maps ``optim.optimizer`` to ``constructor(params, optim: OptimConfig) -> torch.optim.Optimizer``
(``params``: parameters or parameter groups, whose own ``lr`` wins over ``optim.lr``). A new optimizer is one
decorated function::

    @OPTIMIZERS.register("lamb")
    def lamb(params, optim):
        return Lamb(params, lr=optim.lr, weight_decay=optim.weight_decay)

in this module, or in any module imported before the config is loaded.

The schedule (:class:`CosineSchedule`) is the authors' epoch-wise cosine, or per step when the run is bounded by
``trainer.max_steps`` or starts with a warmup (``optim.warmup_steps``, ScaLR's); the learning rate is a pure
function of the scheduler's step count, so resumed runs continue it exactly. This module imports torch only (not
Lightning): checking an optimizer name stays cheap.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from slidr.config import OptimConfig
from slidr.registry import Registry

OPTIMIZERS: Registry[Any] = Registry("optimizer", home="slidr.engine.optim")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[Any], optim: OptimConfig) -> torch.optim.Optimizer:
    """SGD with momentum, dampening and weight decay (the authors' optimizer)."""
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, dampening=optim.dampening,
                           weight_decay=optim.weight_decay)


@OPTIMIZERS.register("adam")
def adam(params: Iterable[Any], optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam with L2 weight decay."""
    return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[Any], optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)


def build_optimizer(params: Iterable[Any], optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``optim.optimizer`` over ``params`` (parameters or parameter groups)."""
    return OPTIMIZERS.get(optim.optimizer, where="optim.optimizer")(params, optim)


class CosineSchedule:
    """Learning-rate factor of scheduler step ``t``: cosine from 1 to ``min_factor``, after an optional warmup.

    ``steps_per_epoch`` > 0: the factor changes once per epoch (the authors' epoch-wise cosine over
    ``total`` epochs); ``steps_per_epoch`` = 0: per step over ``total`` steps (iteration-based methods).
    ``warmup`` > 0 (steps; only with ``steps_per_epoch`` = 0): the factor is ``t / warmup`` for ``t < warmup``
    (0 at the first step), then the cosine runs over the remaining ``total - warmup`` steps (ScaLR's
    ``WarmupCosine``); with ``constant``, 1 after the warmup.
    A picklable object (not a lambda) so that ``LambdaLR`` saves it in checkpoints.
    """

    def __init__(self, total: int, steps_per_epoch: int = 0, min_factor: float = 0.0, constant: bool = False,
                 warmup: int = 0):
        if warmup and steps_per_epoch:
            raise ValueError("a warmup is counted in steps: use steps_per_epoch=0 (a per-step schedule)")
        self.total = max(1, total)
        self.steps_per_epoch = steps_per_epoch
        self.min_factor = min_factor
        self.constant = constant
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        warmup = self.warmup
        if step < warmup:
            return step / warmup
        if self.constant:
            return 1.0
        done = step // self.steps_per_epoch if self.steps_per_epoch else step - warmup
        span = max(1, self.total - warmup)
        progress = min(done, span) / span
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def configure_optimization(params: Iterable[Any], optim: OptimConfig, trainer: Any) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns: the optimizer and its per-step schedule.

    Parameters
    ----------
    params : parameters or parameter groups
    optim : OptimConfig
    trainer : the Lightning trainer (``estimated_stepping_batches``, ``max_steps``, ``max_epochs``)
    """
    optimizer = build_optimizer(params, optim)
    total_steps = int(trainer.estimated_stepping_batches)
    constant = optim.scheduler == "constant"
    if optim.warmup_steps > 0 or (trainer.max_steps is not None and trainer.max_steps > 0):
        schedule = CosineSchedule(total_steps, 0, optim.min_lr / optim.lr, constant, optim.warmup_steps)
    else:
        epochs = trainer.max_epochs
        schedule = CosineSchedule(epochs, max(1, total_steps // epochs), optim.min_lr / optim.lr, constant)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
