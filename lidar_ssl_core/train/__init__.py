"""Image-to-LiDAR pretraining: config, trainer and checkpoints.

The trainer is imported lazily: ``lidar_ssl_core.config`` needs ``train.config`` for its ``pretrain``
section, and the trainer itself needs ``lidar_ssl_core.config``.
"""

from __future__ import annotations

from typing import Any

from lidar_ssl_core.train.checkpoint import TrainingCheckpointError, load_checkpoint, save_checkpoint
from lidar_ssl_core.train.config import LossOptions, PretrainConfig

_TRAINER_NAMES = {
    "EpochBatchSampler",
    "FitResult",
    "Pretrainer",
    "TrainingError",
    "build_pretraining",
    "StepStats",
    "make_pretrain_loader",
}

__all__ = [
    "EpochBatchSampler",
    "FitResult",
    "LossOptions",
    "PretrainConfig",
    "Pretrainer",
    "StepStats",
    "TrainingCheckpointError",
    "TrainingError",
    "build_pretraining",
    "load_checkpoint",
    "make_pretrain_loader",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from lidar_ssl_core.train import pretrain

        return getattr(pretrain, name)
    raise AttributeError(name)
