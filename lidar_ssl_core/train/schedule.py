"""Learning-rate schedules of pretraining (``pretrain.schedule``), wrapped around whatever optimiser the
method built (the SLidR family's SGD, ScaLR's and NCLR's AdamW), so every method gets the same schedules.

- ``cosine``: :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` from the optimiser's lr to
  ``pretrain.min_lr`` over ``pretrain.epochs``, stepped once per epoch (SLidR, methods.md A.1);
- ``warmup_cosine``: ScaLR's per-iteration schedule (reference-implementations.md section 6): a linear
  warm-up from 0 over ``pretrain.warmup_steps`` optimiser steps, then a cosine to ``pretrain.min_lr`` at the
  last step of the last epoch, stepped after every optimiser step;
- ``constant``: no scheduler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.train.config import PretrainConfig

log = logging.getLogger(__name__)

#: schedules stepped after every optimiser step (the others are stepped at epoch ends)
PER_STEP_SCHEDULES = frozenset({"warmup_cosine"})


def warmup_cosine_factor(step: int, *, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the base lr before optimiser step ``step`` (0-based): ``step / warmup`` during the
    warm-up, then ``floor + (1 - floor) (1 + cos(pi p)) / 2`` with p going from 0 to 1 over the remaining
    ``total - warmup`` steps (held at ``floor`` past ``total``)."""
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (1.0 - floor) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    config: PretrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The scheduler of ``config.schedule`` on ``optimizer`` (None for ``constant``).

    ``pretrain.min_lr`` is an absolute floor: every parameter group ends there, whatever its own lr (the
    method's optimiser sets the lrs: ``pretrain.lr``, ``pretrain.scalr.lr``, ``pretrain.nclr.lr``).
    """
    if config.schedule == "constant":
        return None
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
    if any(config.min_lr > lr for lr in base_lrs):
        raise ConfigError(
            f"pretrain.min_lr ({config.min_lr}) is above the optimiser's learning rate {min(base_lrs)} "
            f"(method {config.method!r}); lower it (-s pretrain.min_lr=...)"
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.min_lr
        )
    total = config.epochs * steps_per_epoch
    if config.warmup_steps >= total:
        log.warning(
            "pretrain.warmup_steps (%d) >= the run's %d steps (%d epochs x %d): the warm-up never ends "
            "and the lr stays below its peak",
            config.warmup_steps,
            total,
            config.epochs,
            steps_per_epoch,
        )

    def factor(floor: float) -> Callable[[int], float]:
        # closures, not objects: LambdaLR then stores no lambda state, and a resumed run recomputes the
        # schedule from its config and data (the live trainer's data set grows between rounds)
        return lambda step: warmup_cosine_factor(step, warmup=config.warmup_steps, total=total, floor=floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(config.min_lr / lr) for lr in base_lrs])


def steps_every_iteration(config: PretrainConfig) -> bool:
    """Whether the scheduler of ``config`` is stepped after every optimiser step (else at epoch ends)."""
    return config.schedule in PER_STEP_SCHEDULES
