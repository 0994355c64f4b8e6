"""Voxelisation of a point cloud into a sparse grid (cylindrical as in SLidR, or Cartesian).

Behaviour follows MinkowskiEngine's ``sparse_quantize(return_index=True, return_inverse=True)`` as used by
the SLidR code: every point gets the integer cell ``floor(coordinate / size)``, a voxel is one occupied
cell, its *representative* point is the first point (lowest index) that falls in it, and the inverse map
sends each point to its voxel (used to re-index point-pixel pairs and to carry voxel predictions back to
all points).

Conventions (decided here, relied upon elsewhere):

- ``coords`` are the **signed** cell indices, exactly ``floor(coordinate / size)``; nothing is shifted, so
  the same point always lands in the same cell whatever else is in the cloud. Sparse-conv libraries that
  need non-negative indices (spconv) take ``shift_to_origin(coords)``.
- Voxels are ordered lexicographically by ``(c0, c1, c2)``; the result is fully deterministic.
- Cylindrical cells: ``rho = sqrt(x^2 + y^2)``, ``phi = atan2(y, x)`` in **degrees in [-180, 180)`` (an exact
  +180 is folded to -180 so that a 1-degree grid has exactly 360 azimuth bins; MinkowskiEngine would give
  that single ray a bin of its own), ``z``; each divided by ``VoxelConfig.size`` = (rho m, phi deg, z m).
  The azimuth does not wrap: the bins either side of -180/+180 are not neighbours in the grid, as in the
  reference.
- The division is done in float64 (the reference divides in float32); the two can differ only for
  coordinates within float32 rounding of a cell boundary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.config import VoxelConfig, VoxelMode
from lidar_ssl_core.errors import DatasetError

logger = logging.getLogger(__name__)

_INT32_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Voxelization:
    """Result of ``voxelize``: the occupied cells and the maps between points and voxels."""

    coords: npt.NDArray[np.int32]  # (V, 3) signed cell indices, sorted lexicographically
    point_to_voxel: npt.NDArray[np.int64]  # (N,) voxel of each point (the "inverse" map)
    voxel_to_point: npt.NDArray[np.int64]  # (V,) representative point: first point of each voxel
    counts: npt.NDArray[np.int64]  # (V,) number of points in each voxel

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.point_to_voxel.shape[0])


def cylindrical_coordinates(xyz: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """(N, 3) xyz -> (N, 3) float64 (rho in m, phi in degrees in [-180, 180), z in m)."""
    return np.ascontiguousarray(_cylindrical_rows(_as_points(xyz)).T)


def cell_coordinates(xyz: npt.NDArray[np.floating], config: VoxelConfig) -> npt.NDArray[np.int64]:
    """(N, 3) signed integer cell of every point (before grouping into voxels)."""
    return np.ascontiguousarray(_cell_rows(xyz, config).T)


def voxelize(xyz: npt.NDArray[np.floating], config: VoxelConfig) -> Voxelization:
    """Group points into occupied cells; representative = first point of each cell (ME sparse_quantize)."""
    rows = _cell_rows(xyz, config)  # (3, N): per-axis rows keep every reduction contiguous (fast)
    n = rows.shape[1]
    if n == 0:
        return Voxelization(
            coords=np.zeros((0, 3), np.int32),
            point_to_voxel=np.zeros(0, np.int64),
            voxel_to_point=np.zeros(0, np.int64),
            counts=np.zeros(0, np.int64),
        )
    lows = rows.min(axis=1)
    extents = rows.max(axis=1) - lows + 1
    key_space = int(extents[0]) * int(extents[1]) * int(extents[2])
    if key_space >= 2**62:
        # Cells spread over an absurd range: row-wise unique is slow but cannot overflow.
        logger.debug("voxel key space %d too large to pack; using row-wise unique", key_space)
        _, first, inverse, counts = np.unique(
            rows.T, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        inverse = inverse.reshape(-1).astype(np.int64)
        first = first.astype(np.int64)
        counts = counts.astype(np.int64)
    else:
        keys = (rows[0] - lows[0]) * extents[1]
        keys += rows[1] - lows[1]
        keys *= extents[2]
        keys += rows[2] - lows[2]
        first, inverse, counts = _group_keys(keys, (key_space - 1).bit_length())
    coords = np.empty((first.shape[0], 3), dtype=np.int32)
    for axis in range(3):
        coords[:, axis] = rows[axis, first]
    return Voxelization(coords=coords, point_to_voxel=inverse, voxel_to_point=first, counts=counts)


def _cylindrical_rows(pts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 3) float64 xyz -> (3, N) rows of rho, phi (deg, [-180, 180)), z."""
    x = np.ascontiguousarray(pts[:, 0])
    y = np.ascontiguousarray(pts[:, 1])
    out = np.empty((3, pts.shape[0]), dtype=np.float64)
    np.sqrt(x * x + y * y, out=out[0])
    np.degrees(np.arctan2(y, x), out=out[1])
    out[1][out[1] >= 180.0] -= 360.0
    out[2] = pts[:, 2]
    return out


def _cell_rows(xyz: npt.NDArray[np.floating], config: VoxelConfig) -> npt.NDArray[np.int64]:
    """(3, N) signed integer cells, checked for non-finite input and int32 overflow."""
    pts = _as_points(xyz)
    finite = np.isfinite(pts)
    if not finite.all():
        bad = int(np.count_nonzero(~finite.all(axis=1)))
        raise DatasetError(
            f"cannot voxelize: {bad} of {pts.shape[0]} points have a NaN or infinite coordinate; "
            "drop them first (xyz[np.isfinite(xyz).all(axis=1)])"
        )
    cylindrical = config.mode == VoxelMode.CYLINDRICAL
    scaled = _cylindrical_rows(pts) if cylindrical else np.ascontiguousarray(pts.T)
    scaled /= np.asarray(config.size, dtype=np.float64)[:, None]
    np.floor(scaled, out=scaled)
    if scaled.size and (scaled.max() > _INT32_LIMIT or scaled.min() < -_INT32_LIMIT):
        raise DatasetError(
            f"voxel index out of int32 range (|index| up to {np.abs(scaled).max():.3g}): points are too "
            f"far away for voxel size {config.size}; filter far points or use larger voxels"
        )
    return scaled.astype(np.int64)


def _group_keys(
    keys: npt.NDArray[np.int64], key_bits: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sort-based grouping of non-negative keys -> (first index per group, group of each key, sizes).

    The order comes from an LSD radix sort over 16-bit digits (numpy's stable argsort of uint16 is a
    counting sort), two passes for the usual < 2^32 key space: about 3x faster than the comparison
    sort inside ``np.unique``. Being stable, the first element of each group is its first occurrence.
    """
    n = keys.shape[0]
    order = np.arange(n, dtype=np.int64)
    for shift in range(0, max(key_bits, 1), 16):
        digit = ((keys[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    sorted_keys = keys[order]
    starts_mask = np.empty(n, dtype=bool)
    starts_mask[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=starts_mask[1:])
    starts = np.flatnonzero(starts_mask)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(starts_mask) - 1
    counts = np.diff(np.append(starts, n)).astype(np.int64)
    return order[starts], inverse, counts


def voxel_mean(
    features: npt.NDArray[Any],
    point_to_voxel: npt.NDArray[np.integer],
    num_voxels: int,
    *,
    voxel_to_point: npt.NDArray[np.integer] | None = None,
) -> npt.NDArray[Any]:
    """Per-voxel feature: the mean over the voxel's points, or (``voxel_to_point`` given) the
    representative point's feature, which is what the SLidR code feeds the network.

    ``features`` is (N,) or (N, C); the result is (V,) or (V, C). Means are float32 for float32 input and
    float64 otherwise; a voxel with no point gets zeros.
    """
    feats = np.asarray(features)
    p2v = np.asarray(point_to_voxel)
    if feats.ndim not in (1, 2) or p2v.ndim != 1 or feats.shape[0] != p2v.shape[0]:
        raise DatasetError(
            f"voxel_mean: features {feats.shape} and point_to_voxel {p2v.shape} must have the same "
            "number of points (features (N,) or (N, C), point_to_voxel (N,))"
        )
    if p2v.size and (p2v.min() < 0 or p2v.max() >= num_voxels):
        raise DatasetError(
            f"voxel_mean: point_to_voxel holds indices in [{p2v.min()}, {p2v.max()}] "
            f"outside [0, {num_voxels})"
        )
    if voxel_to_point is not None:
        rep = np.asarray(voxel_to_point)
        if rep.shape != (num_voxels,):
            raise DatasetError(f"voxel_mean: voxel_to_point has shape {rep.shape}, expected ({num_voxels},)")
        return feats[rep]
    out_dtype = np.float32 if feats.dtype == np.float32 else np.float64
    counts = np.bincount(p2v, minlength=num_voxels).astype(np.float64)
    denom = np.maximum(counts, 1.0)
    columns = feats.reshape(feats.shape[0], -1)
    sums = np.empty((num_voxels, columns.shape[1]), dtype=np.float64)
    for c in range(columns.shape[1]):  # loop over channels (few), never over points
        sums[:, c] = np.bincount(p2v, weights=columns[:, c].astype(np.float64), minlength=num_voxels)
    means = (sums / denom[:, None]).astype(out_dtype)
    return means.reshape((num_voxels, *feats.shape[1:]))


def shift_to_origin(
    coords: npt.NDArray[np.integer],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Non-negative copy of ``coords`` and the offset subtracted (``coords = shifted + offset``).

    For libraries that index a dense grid (spconv's ``spatial_shape = shifted.max(0) + 1``). The offset
    depends on the cloud, so keep it if absolute cells matter later.
    """
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 3:
        raise DatasetError(f"shift_to_origin: coords must be (V, 3), got {c.shape}")
    offset = c.min(axis=0).astype(np.int32) if c.shape[0] else np.zeros(3, np.int32)
    return (c - offset).astype(np.int32), offset


def _as_points(xyz: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    pts = np.asarray(xyz)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise DatasetError(f"points must be an (N, 3) array of x y z, got shape {pts.shape}")
    return np.asarray(pts[:, :3], dtype=np.float64)
