"""From a decoded frame to a training sample: pairs, superpixels, augmentation, voxels.

The order is SLidR's (methods.md A.1): superpixels on the full decoded image, projection to point-pixel
pairs, point augmentations, cuboid drop, per-image crop-resize and flip, then voxelisation of the
augmented points. Pairs are re-indexed by every step that drops points or pixels (``augment``), so the
sample's pairs always name the same physical point and image content.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.augment import PairedSample, augment_sample, eval_transform
from lidar_ssl_core.config import DataConfig
from lidar_ssl_core.data.frames import Frame
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.types import PointPixelPairs
from lidar_ssl_core.voxels import Voxelization, voxelize

#: weak-label value meaning "no label" (mask files: 8-bit, 0..254 are classes)
NO_LABEL = 255
#: weak labels ride through the image augmentations in the superpixel maps as ``id * SPAN + label``
_LABEL_SPAN = 256


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
    weak_labels: npt.NDArray[np.uint8] | None = None  # (C, H, W) class ids, NO_LABEL = none (OLIVINE)

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
    weak_labels: SuperpixelSource | None = None,
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
    label_maps = None
    if weak_labels is not None:
        label_maps = tuple(
            _weak_label_map(weak_labels, img.image, f"{bag}/{name}" if bag else name, img.stamp_ns)
            for name, img in zip(frame.cameras, frame.images, strict=True)
        )
    paired = PairedSample(
        xyz=cloud.xyz,
        images=tuple(img.image for img in frame.images),
        pairs=pairs,
        superpixels=_pack(sp_maps, label_maps),
        features=cloud.intensity,
        labels=cloud.label,
    )
    if train and config.augment.enabled:
        paired = augment_sample(paired, config.augment, rng).sample
    else:
        paired = eval_transform(paired, config.augment)
    maps, weak = _unpack(
        paired.superpixels, with_superpixels=sp_maps is not None, with_labels=label_maps is not None
    )
    paired = replace(paired, superpixels=maps)
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
        weak_labels=weak,
    )


def _weak_label_map(
    source: SuperpixelSource, rgb: npt.NDArray[np.uint8], camera: str, stamp_ns: int
) -> npt.NDArray[np.int64]:
    labels = np.asarray(source(rgb, camera=camera, stamp_ns=stamp_ns))
    if labels.shape != rgb.shape[:2] or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"weak label mask of {camera} at {stamp_ns} is {labels.dtype} {labels.shape}; an integer map of "
            f"the image size {rgb.shape[:2]} was expected"
        )
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > NO_LABEL):
        raise DatasetError(f"weak label mask of {camera} at {stamp_ns} has values outside 0..{NO_LABEL}")
    return labels.astype(np.int64)


def _pack(
    superpixels: tuple[npt.NDArray[np.int32], ...] | None,
    labels: tuple[npt.NDArray[np.int64], ...] | None,
) -> tuple[npt.NDArray[np.int64], ...] | tuple[npt.NDArray[np.int32], ...] | None:
    """Superpixel ids and weak labels in one map per image, so that one crop/flip moves both."""
    if labels is None:
        return superpixels
    if superpixels is None:
        return labels
    return tuple(sp.astype(np.int64) * _LABEL_SPAN + lab for sp, lab in zip(superpixels, labels, strict=True))


def _unpack(
    maps: tuple[npt.NDArray[np.integer], ...] | None, *, with_superpixels: bool, with_labels: bool
) -> tuple[tuple[npt.NDArray[np.integer], ...] | None, npt.NDArray[np.uint8] | None]:
    """Inverse of :func:`_pack` after the augmentations: (superpixel maps, stacked weak labels)."""
    if maps is None or not with_labels:
        return maps, None
    labels = np.stack([m % _LABEL_SPAN for m in maps]).astype(np.uint8)
    superpixels = tuple((m // _LABEL_SPAN).astype(np.int32) for m in maps) if with_superpixels else None
    return superpixels, labels
