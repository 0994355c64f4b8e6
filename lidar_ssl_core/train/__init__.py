"""Image-to-LiDAR pretraining: config, trainer and checkpoints."""

from __future__ import annotations

from lidar_ssl_core.train.checkpoint import TrainingCheckpointError, load_checkpoint, save_checkpoint
from lidar_ssl_core.train.config import LossOptions, PretrainConfig
from lidar_ssl_core.train.pretrain import (
    EpochBatchSampler,
    FitResult,
    Pretrainer,
    TrainingError,
    build_pretraining,
    compute_loss,
    is_main_process,
    make_pretrain_loader,
)

__all__ = [
    "EpochBatchSampler",
    "FitResult",
    "LossOptions",
    "PretrainConfig",
    "Pretrainer",
    "TrainingCheckpointError",
    "TrainingError",
    "build_pretraining",
    "compute_loss",
    "is_main_process",
    "load_checkpoint",
    "make_pretrain_loader",
    "save_checkpoint",
]
