"""Superpixels for SLidR-style pretraining (reference SLIC, fast SLIC, external masks, cache)."""

from __future__ import annotations

from lidar_ssl_core.superpixels.cache import SuperpixelCache
from lidar_ssl_core.superpixels.connectivity import enforce_connectivity
from lidar_ssl_core.superpixels.external import external_mask_path, load_external_mask
from lidar_ssl_core.superpixels.fast import slic_fast
from lidar_ssl_core.superpixels.metrics import boundary_recall, undersegmentation_error
from lidar_ssl_core.superpixels.pipeline import Superpixelizer
from lidar_ssl_core.superpixels.reference import slic_reference

__all__ = [
    "SuperpixelCache",
    "Superpixelizer",
    "boundary_recall",
    "enforce_connectivity",
    "external_mask_path",
    "load_external_mask",
    "slic_fast",
    "slic_reference",
    "undersegmentation_error",
]
