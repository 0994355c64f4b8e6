"""From a decoded frame to a training sample: pairs, superpixels, augmentation, voxels.

The order is SLidR's (methods.md A.1): superpixels on the full decoded image, projection to point-pixel
pairs, point augmentations, cuboid drop, per-image crop-resize and flip, then voxelisation of the
augmented points. Pairs are re-indexed by every step that drops points or pixels (``augment``), so the
sample's pairs always name the same physical point and image content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.augment import PairedSample, augment_sample, eval_transform
from lidar_ssl_core.config import DataConfig
from lidar_ssl_core.data.frames import Frame
from lidar_ssl_core.types import PointPixelPairs
from lidar_ssl_core.voxels import Voxelization, voxelize


class SuperpixelSource(Protocol):
    """Anything that gives a label map for an image (``superpixels.Superpixelizer`` in practice)."""

    def __call__(
        self, rgb: npt.NDArray[np.uint8], *, camera: str, stamp_ns: int
    ) -> npt.NDArray[np.integer]: ...


@dataclass(frozen=True)
class TrainingSample:
    """One sample, ready for collation. Shapes: N points, V voxels, C cameras, M pairs, (H, W) images."""

    xyz: npt.NDArray[np.float32]  # (N, 3) augmented points, LiDAR frame
    intensity: npt.NDArray[np.float32]  # (N,)
    labels: npt.NDArray[np.int64] | None  # (N,) raw dataset ids when the bag has them
    voxels: Voxelization  # coords (V, 3), point_to_voxel (N,), voxel_to_point (V,)
    images: npt.NDArray[np.uint8]  # (C, H, W, 3) RGB
    superpixels: npt.NDArray[np.int32] | None  # (C, H, W) per-image ids 0..K-1
    pairs: PointPixelPairs  # point_index (M,) into xyz, camera_index (M,), pixel (M, 2) (row, col)
    cameras: tuple[str, ...]  # (C,)
    stamp_ns: int
    source: str  # "<bag>#<frame position>", for logs and debugging
    replaced: tuple[str, ...] = ()  # frames that failed to load and were replaced by this one

    @property
    def pair_voxels(self) -> npt.NDArray[np.int64]:
        """(M,) voxel of each pair's point: pairs are really voxel-pixel pairs for the network."""
        return self.voxels.point_to_voxel[self.pairs.point_index]

    @property
    def pair_superpixels(self) -> npt.NDArray[np.int64] | None:
        """(M,) superpixel id (within its image) under each pair's pixel."""
        if self.superpixels is None:
            return None
        p = self.pairs
        return self.superpixels[p.camera_index, p.pixel[:, 0], p.pixel[:, 1]].astype(np.int64)


def build_sample(
    frame: Frame,
    config: DataConfig,
    rng: np.random.Generator,
    *,
    train: bool,
    superpixels: SuperpixelSource | None,
    source: str = "",
    bag: str = "",
) -> TrainingSample:
    """Turn a frame into a sample (random augmentations when ``train``, else the validation resize).

    Superpixels are asked for under the key ``<bag>/<camera>`` and the image stamp, so caches and
    external masks of different bags never collide (stamps alone repeat across recordings).
    """
    pairs = frame.project(config.projection.min_depth_m)
    cloud = frame.cloud
    sp_maps = None
    if superpixels is not None:
        sp_maps = tuple(
            np.asarray(
                superpixels(img.image, camera=f"{bag}/{name}" if bag else name, stamp_ns=img.stamp_ns),
                dtype=np.int32,
            )
            for name, img in zip(frame.cameras, frame.images, strict=True)
        )
    paired = PairedSample(
        xyz=cloud.xyz,
        images=tuple(img.image for img in frame.images),
        pairs=pairs,
        superpixels=sp_maps,
        features=cloud.intensity,
        labels=cloud.label,
    )
    if train and config.augment.enabled:
        paired = augment_sample(paired, config.augment, rng).sample
    else:
        paired = eval_transform(paired, config.augment)
    xyz = np.ascontiguousarray(paired.xyz, dtype=np.float32)
    intensity = np.asarray(paired.features, dtype=np.float32)
    labels = None if paired.labels is None else np.asarray(paired.labels, dtype=np.int64)
    return TrainingSample(
        xyz=xyz,
        intensity=intensity,
        labels=labels,
        voxels=voxelize(xyz, config.voxels),
        images=np.stack(paired.images) if paired.images else np.zeros((0, 1, 1, 3), np.uint8),
        superpixels=None if paired.superpixels is None else np.stack(paired.superpixels).astype(np.int32),
        pairs=paired.pairs,
        cameras=frame.cameras,
        stamp_ns=cloud.stamp_ns,
        source=source,
    )
