"""Project 3-D points (camera optical frame: z forward, x right, y down) into an image.

Which matrix is used:

* ``D`` all zero (rectified or undistorted images, nuScenes, KITTI): the 3x4 ``P`` of the intrinsics
  (``intrinsics.projection``, ``[K | 0]`` when P is unset). Using P rather than K keeps KITTI's rectified
  ``P2`` exact, including its baseline column ``P2[:, 3]``: ``[u v w]^T = P [X Y Z 1]^T``, ``(u, v) / w``.
* ``D`` non-zero (raw images from a real driver): the image is not rectified, so P (which describes the
  rectified image in ROS) does not apply. Points go to normalised coordinates ``(X/Z, Y/Z)``, are distorted
  with the model (``plumb_bob``: k1 k2 p1 p2 k3; ``rational_polynomial``: k1 k2 p1 p2 k3 k4 k5 k6;
  ``equidistant``: fisheye k1 k2 k3 k4 as OpenCV's ``cv::fisheye``), then mapped through K. Polynomial models
  fold back far outside their calibrated field of view, which would put points seen at grazing angles into
  the image a second time; points beyond the radius where the model stops being monotonic are dropped.

In-image test, the same as the official nuscenes-devkit ``map_pointcloud_to_image``: keep points with
``depth > min_depth`` and ``1 < u < W - 1`` and ``1 < v < H - 1`` (strict, in pixel coordinates where the
centre of the top-left pixel is (0, 0)). ``depth`` is the point's z in the camera frame. The integer pixel is
``(row, col) = round(v), round(u)`` (numpy rounding), which the test keeps inside ``[1, H-1] x [1, W-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import CalibrationError
from lidar_ssl_core.geometry.transforms import Matrix4
from lidar_ssl_core.types import CameraIntrinsics

F64 = npt.NDArray[np.float64]

_MODELS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


@dataclass(frozen=True)
class Projection:
    """The points of a cloud that land in one image."""

    point_index: npt.NDArray[np.int64]  # (M,) index into the projected points
    uv: F64  # (M, 2) sub-pixel (u = column, v = row)
    pixel: npt.NDArray[np.int64]  # (M, 2) (row, col)
    depth: F64  # (M,) z in the camera frame, metres

    def __len__(self) -> int:
        return int(self.point_index.shape[0])


def _coefficients(intrinsics: CameraIntrinsics) -> F64:
    model = intrinsics.distortion_model
    n = _MODELS.get(model)
    if n is None:
        raise CalibrationError(
            f"camera {intrinsics.frame_id or '?'}: distortion model {model!r} not supported "
            f"(supported: {', '.join(_MODELS)})"
        )
    D = np.asarray(intrinsics.D, dtype=np.float64).ravel()
    if D.size > n and np.any(D[n:] != 0.0):
        raise CalibrationError(
            f"camera {intrinsics.frame_id or '?'}: {model} takes {n} coefficients, got {D.size} "
            f"with non-zero extras {D[n:].tolist()}"
        )
    out = np.zeros(n)
    out[: min(n, D.size)] = D[:n]
    return out


def _radial_profile(model: str, c: F64, r: F64) -> F64:
    """Distorted radius (or angle for equidistant) as a function of the undistorted one, no tangential."""
    if model == "equidistant":
        th = r  # r is the incidence angle here
        t2 = th * th
        out: F64 = th * (1 + t2 * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * c[3]))))
        return out
    r2 = r * r
    out = r * (1 + r2 * (c[0] + r2 * (c[1] + r2 * c[4])))
    if model == "rational_polynomial":
        out = out / (1 + r2 * (c[5] + r2 * (c[6] + r2 * c[7])))
    return out


@lru_cache(maxsize=64)
def _monotonic_limit(model: str, coeffs: tuple[float, ...]) -> float:
    """Largest undistorted radius (angle for equidistant) up to which the radial map keeps increasing."""
    c = np.asarray(coeffs)
    top = np.pi / 2 if model == "equidistant" else 20.0  # 20 = 87 degrees off-axis for pinhole models
    r = np.linspace(0.0, top, 20001)
    prof = _radial_profile(model, c, r)
    if model == "rational_polynomial":
        den = 1 + r**2 * (c[5] + r**2 * (c[6] + r**2 * c[7]))
        bad_den = np.nonzero(den <= 1e-6)[0]
        if bad_den.size:
            prof = prof[: bad_den[0]]
    falling = np.nonzero(np.diff(prof) <= 0)[0]
    stop = falling[0] if falling.size else prof.size - 1
    if model == "equidistant" and not falling.size:
        return float("inf")  # valid up to 90 degrees; z > 0 is checked separately
    return float(r[stop])


def distort(x: F64, y: F64, intrinsics: CameraIntrinsics) -> tuple[F64, F64, npt.NDArray[np.bool_]]:
    """Distorted normalised coordinates of undistorted ones, and which are within the model's valid range."""
    model = intrinsics.distortion_model
    c = _coefficients(intrinsics)
    r2 = x * x + y * y
    r = np.sqrt(r2)
    limit = _monotonic_limit(model, tuple(float(v) for v in c))
    if model == "equidistant":
        th = np.arctan(r)
        thd = _radial_profile(model, c, th)
        scale = np.divide(thd, r, out=np.ones_like(r), where=r > 1e-12)
        return x * scale, y * scale, th <= limit
    radial = _radial_profile(model, c, r)
    scale = np.divide(radial, r, out=np.ones_like(r), where=r > 1e-12)
    p1, p2 = c[2], c[3]
    xy = x * y
    xd = x * scale + 2 * p1 * xy + p2 * (r2 + 2 * x * x)
    yd = y * scale + p1 * (r2 + 2 * y * y) + 2 * p2 * xy
    return xd, yd, r <= limit


def project_to_image(
    points_cam: npt.ArrayLike, intrinsics: CameraIntrinsics, min_depth: float = 1.0
) -> Projection:
    """Points (N, 3) in the camera optical frame -> those inside the image, with (u, v), pixel and depth."""
    pts = np.asarray(points_cam, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points_cam must have shape (N, 3), got {pts.shape}")
    depth = pts[:, 2]
    keep = depth > max(float(min_depth), 0.0)
    idx = np.nonzero(keep)[0]
    sub = pts[idx]
    if intrinsics.is_distorted:
        z = sub[:, 2]
        xd, yd, valid = distort(sub[:, 0] / z, sub[:, 1] / z, intrinsics)
        K = np.asarray(intrinsics.K, dtype=np.float64)
        u = K[0, 0] * xd + K[0, 1] * yd + K[0, 2]
        v = K[1, 1] * yd + K[1, 2]
    else:
        P = np.asarray(intrinsics.projection, dtype=np.float64)
        uvw = sub @ P[:, :3].T + P[:, 3]
        w = uvw[:, 2]
        valid = w > 0
        w_safe = np.where(valid, w, 1.0)
        u = uvw[:, 0] / w_safe
        v = uvw[:, 1] / w_safe
    W, H = intrinsics.width, intrinsics.height
    inside = valid & (u > 1) & (u < W - 1) & (v > 1) & (v < H - 1)
    idx = idx[inside]
    uv = np.stack([u[inside], v[inside]], axis=1)
    pixel = np.round(uv[:, ::-1]).astype(np.int64)
    return Projection(point_index=idx.astype(np.int64), uv=uv, pixel=pixel, depth=depth[idx])


def project_cloud(
    xyz_lidar: npt.ArrayLike,
    T_cam_lidar: Matrix4,
    intrinsics: CameraIntrinsics,
    min_depth: float = 1.0,
) -> Projection:
    """LiDAR points (N, 3) + T(camera <- lidar) -> :class:`Projection` (indices refer to ``xyz_lidar``)."""
    xyz = np.asarray(xyz_lidar, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz_lidar must have shape (N, 3), got {xyz.shape}")
    T = np.asarray(T_cam_lidar, dtype=np.float64)
    pts_cam = xyz @ T[:3, :3].T + T[:3, 3]
    return project_to_image(pts_cam, intrinsics, min_depth)
