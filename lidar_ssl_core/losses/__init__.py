"""Image-to-LiDAR pretraining losses: PPKT, SLidR, ST-SLidR and ScaLR (pure torch, any device)."""

from __future__ import annotations

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.loss_options import DEFAULT_NUM_MATCHES, DEFAULT_TEMPERATURE, STForm, Tolerance, VoteNorm
from lidar_ssl_core.losses.gather import Gather, all_gather_rows
from lidar_ssl_core.losses.infonce import LossDetails, infonce, sample_pairs
from lidar_ssl_core.losses.ppkt import gather_pixel_features, ppkt_details, ppkt_loss
from lidar_ssl_core.losses.scalr import ScalrLossOptions, scalr_details, scalr_loss
from lidar_ssl_core.losses.slidr import (
    PooledSuperpixels,
    pool_image_features,
    pool_superpixels,
    slidr_details,
    slidr_loss,
)
from lidar_ssl_core.losses.st_slidr import (
    ST_PPKT_DEFAULTS,
    TolerantOptions,
    class_agnostic_weights,
    semantically_tolerant_details,
    semantically_tolerant_loss,
    st_ppkt_details,
    st_ppkt_loss,
    st_slidr_details,
    st_slidr_loss,
    teacher_similarity,
)

__all__ = [
    "DEFAULT_NUM_MATCHES",
    "DEFAULT_TEMPERATURE",
    "ST_PPKT_DEFAULTS",
    "Gather",
    "LossDetails",
    "LossInputError",
    "PooledSuperpixels",
    "STForm",
    "ScalrLossOptions",
    "Tolerance",
    "TolerantOptions",
    "VoteNorm",
    "all_gather_rows",
    "class_agnostic_weights",
    "gather_pixel_features",
    "infonce",
    "pool_image_features",
    "pool_superpixels",
    "ppkt_details",
    "ppkt_loss",
    "sample_pairs",
    "scalr_details",
    "scalr_loss",
    "semantically_tolerant_details",
    "semantically_tolerant_loss",
    "slidr_details",
    "slidr_loss",
    "st_ppkt_details",
    "st_ppkt_loss",
    "st_slidr_details",
    "st_slidr_loss",
    "teacher_similarity",
]
