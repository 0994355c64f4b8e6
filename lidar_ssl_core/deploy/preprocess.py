"""Checks and point selection in front of the network; the voxelisation itself is training's own.

The network input is built by :func:`lidar_ssl_core.downstream.data.network_input`, the function training,
``evaluate`` and pretraining's collate use, so a deployed model sees exactly what it was trained on. This
module only decides which points reach it: points with a non-finite coordinate or intensity, and points
beyond the grid's reach (:data:`~lidar_ssl_core.deploy.spec.GRID_LIMIT` cells), are left out and later get
``ignore_index``; a cloud of the wrong layout or above ``max_points`` is a typed error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.config import VoxelConfig, VoxelMode
from lidar_ssl_core.deploy.spec import GRID_LIMIT
from lidar_ssl_core.downstream.data import NetworkInput, network_input
from lidar_ssl_core.errors import PointCloudInputError


@dataclass(frozen=True)
class PreparedCloud:
    """The network input of a cloud's usable points, and which points those are."""

    num_points: int
    keep: npt.NDArray[np.bool_] | None  # (N,) usable points; None = all of them
    inputs: NetworkInput | None  # None when no point is usable

    @property
    def num_voxels(self) -> int:
        return 0 if self.inputs is None else self.inputs.voxels.num_voxels


def split_points(points: npt.ArrayLike) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]:
    """(N, 4+) array ``x y z intensity ...`` -> (xyz, intensity); anything else is a typed error."""
    arr = np.asarray(points)
    if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[1] < 4:
        raise PointCloudInputError(
            f"points must be a numeric (N, 4+) array of x y z intensity [...], got shape {arr.shape} "
            f"dtype {arr.dtype}"
        )
    return arr[:, :3], arr[:, 3]


def in_grid(xyz: npt.NDArray[np.floating], voxels: VoxelConfig) -> npt.NDArray[np.bool_]:
    """Points whose cell index stays within +-GRID_LIMIT on every axis (a metric test, no voxelisation)."""
    s = np.asarray(voxels.size, np.float64)
    x, y, z = (np.asarray(xyz[:, i], np.float64) for i in range(3))
    with np.errstate(invalid="ignore", over="ignore"):
        if voxels.mode == VoxelMode.CYLINDRICAL:
            ok = np.hypot(x, y) < GRID_LIMIT * s[0]
        else:
            ok = (np.abs(x) < GRID_LIMIT * s[0]) & (np.abs(y) < GRID_LIMIT * s[1])
        ok &= np.abs(z) < GRID_LIMIT * s[2]
    return np.asarray(ok, np.bool_)


def prepare_cloud(
    xyz: npt.ArrayLike, intensity: npt.ArrayLike, voxels: VoxelConfig, *, max_points: int
) -> PreparedCloud:
    """Validate a cloud, keep its usable points and voxelise them with training's ``network_input``."""
    pts = np.asarray(xyz)
    inten = np.asarray(intensity)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.dtype.kind not in "fiu":
        raise PointCloudInputError(
            f"xyz must be a numeric (N, 3) array, got shape {pts.shape} dtype {pts.dtype}"
        )
    n = pts.shape[0]
    if inten.shape != (n,) or inten.dtype.kind not in "fiu":
        raise PointCloudInputError(
            f"intensity must be a numeric ({n},) array (one value per point), got shape {inten.shape} "
            f"dtype {inten.dtype}"
        )
    if n > max_points:
        raise PointCloudInputError(
            f"the cloud has {n} points, more than max_points={max_points}; a LiDAR sweep this large is "
            "a merged or corrupt cloud (raise max_points if it is intended)"
        )
    if n == 0:
        return PreparedCloud(0, None, None)
    keep = np.isfinite(pts).all(axis=1) & np.isfinite(inten) & in_grid(pts, voxels)
    if keep.all():
        return PreparedCloud(n, None, network_input(pts, inten, voxels))
    if not keep.any():
        return PreparedCloud(n, keep, None)
    return PreparedCloud(n, keep, network_input(pts[keep], inten[keep], voxels))
