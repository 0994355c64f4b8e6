"""Image-to-LiDAR pretraining: config, trainer and checkpoints.

Everything loads on first use: ``lidar_ssl_core.config`` needs ``train.config`` for its ``pretrain``
section and must stay torch-free, and ``lidar-ssl --help`` reads ``train.method_names`` only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lidar_ssl_core._lazy import lazy_exports

if TYPE_CHECKING:
    from lidar_ssl_core.train.checkpoint import TrainingCheckpointError, load_checkpoint, save_checkpoint
    from lidar_ssl_core.train.config import LossOptions, PretrainConfig
    from lidar_ssl_core.train.pretrain import (
        EpochBatchSampler,
        FitResult,
        Pretrainer,
        StepStats,
        TrainingError,
        build_pretraining,
        make_pretrain_loader,
    )

_LAZY = {
    "LossOptions": "config",
    "PretrainConfig": "config",
    "EpochBatchSampler": "pretrain",
    "FitResult": "pretrain",
    "Pretrainer": "pretrain",
    "StepStats": "pretrain",
    "TrainingError": "pretrain",
    "build_pretraining": "pretrain",
    "make_pretrain_loader": "pretrain",
    "TrainingCheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
}
__getattr__ = lazy_exports(__name__, _LAZY)

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
