"""Camera/LiDAR rig calibration: intrinsics per camera plus the extrinsics held by a TransformBuffer.

``lidar_to_camera`` is the one place that decides how a LiDAR sweep is moved into a camera: with
ego-motion compensation (the sweep and the image are taken at different times while the car moves, so
camera <- ego(t_cam) <- world <- ego(t_lidar) <- lidar, as the nuScenes devkit and SLidR do) when the
buffer has world -> base poses, else the static chain camera <- base <- lidar (logged once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from lidar_ssl_core.errors import CalibrationError, TransformNotFoundError
from lidar_ssl_core.geometry.tf_buffer import TransformBuffer
from lidar_ssl_core.geometry.transforms import Matrix4
from lidar_ssl_core.types import CameraIntrinsics

log = logging.getLogger(__name__)

_warned_lock = threading.Lock()
_warned_no_poses: set[tuple[str, str]] = set()


def lidar_to_camera(
    buffer: TransformBuffer,
    lidar_frame: str,
    lidar_stamp_ns: int,
    camera_frame: str,
    camera_stamp_ns: int,
    base_frame: str,
    world_frame: str,
    compensate: bool = True,
) -> Matrix4:
    """4x4 mapping LiDAR points (sweep at ``lidar_stamp_ns``) into the camera at ``camera_stamp_ns``.

    With ``compensate`` and world -> base poses in the buffer: camera <- ego(t_cam) <- world <-
    ego(t_lidar) <- lidar; the poses must cover both stamps (else ``TransformNotFoundError``, never a
    silent fallback). Without poses (or ``compensate=False``) the static chain at the LiDAR time is used.
    """
    if compensate and buffer.has_path(world_frame, base_frame):
        return buffer.lookup_full(camera_frame, camera_stamp_ns, lidar_frame, lidar_stamp_ns, world_frame)
    if compensate:
        key = (world_frame, base_frame)
        with _warned_lock:
            first = key not in _warned_no_poses
            _warned_no_poses.add(key)
        if first:
            log.info(
                "no %s -> %s poses in the transform buffer: projecting without ego-motion compensation",
                world_frame,
                base_frame,
            )
    return buffer.lookup(camera_frame, lidar_frame, lidar_stamp_ns)


@dataclass(frozen=True)
class CameraCalibration:
    """One camera: its name in the rig (topic namespace), intrinsics, and optical frame id."""

    name: str
    intrinsics: CameraIntrinsics
    frame: str


def validate_intrinsics(name: str, intrinsics: CameraIntrinsics) -> None:
    """Raise CalibrationError naming the camera when K, P or the image size is unusable."""
    K = np.asarray(intrinsics.K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise CalibrationError(f"camera {name}: K must be a finite 3x3 matrix, got shape {K.shape}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationError(
            f"camera {name}: focal lengths fx={K[0, 0]}, fy={K[1, 1]} must be > 0 "
            "(an all-zero K means the driver published an uncalibrated CameraInfo)"
        )
    P = np.asarray(intrinsics.projection, dtype=np.float64)
    if P.shape != (3, 4) or not np.all(np.isfinite(P)) or P[0, 0] <= 0 or P[1, 1] <= 0:
        raise CalibrationError(f"camera {name}: P must be a finite 3x4 with positive focal lengths")
    if intrinsics.width <= 0 or intrinsics.height <= 0:
        raise CalibrationError(
            f"camera {name}: image size {intrinsics.width}x{intrinsics.height} must be positive"
        )


class RigCalibration:
    """Calibration of a LiDAR and a set of cameras, checked once when built.

    Build with :meth:`build`; a camera without intrinsics or without an extrinsic path to the LiDAR raises
    ``CalibrationError`` naming the camera and what is missing, at start-up rather than mid-run.
    """

    def __init__(
        self,
        buffer: TransformBuffer,
        cameras: Mapping[str, CameraCalibration],
        lidar_frame: str,
        base_frame: str = "base_link",
        world_frame: str = "map",
    ) -> None:
        self.buffer = buffer
        self.cameras: dict[str, CameraCalibration] = dict(cameras)
        self.lidar_frame = lidar_frame
        self.base_frame = base_frame
        self.world_frame = world_frame

    @classmethod
    def build(
        cls,
        buffer: TransformBuffer,
        intrinsics: Mapping[str, CameraIntrinsics],
        lidar_frame: str,
        cameras: Iterable[str] | None = None,
        base_frame: str = "base_link",
        world_frame: str = "map",
    ) -> RigCalibration:
        """Check and assemble; ``cameras`` defaults to every camera that has intrinsics.

        A camera's frame is its intrinsics' ``frame_id`` or, when that is empty, the camera name.
        """
        names = sorted(intrinsics) if cameras is None else list(cameras)
        if not buffer.has_frame(lidar_frame):
            raise CalibrationError(
                f"LiDAR frame {lidar_frame!r} is not in the transform buffer (no /tf_static extrinsic); "
                f"known frames: {', '.join(buffer.frames()) or '(none)'}"
            )
        out: dict[str, CameraCalibration] = {}
        for name in names:
            intr = intrinsics.get(name)
            if intr is None:
                raise CalibrationError(
                    f"camera {name}: missing intrinsics (no CameraInfo received); "
                    f"cameras with intrinsics: {', '.join(sorted(intrinsics)) or '(none)'}"
                )
            validate_intrinsics(name, intr)
            frame = intr.frame_id or name
            if not buffer.has_path(frame, lidar_frame):
                raise CalibrationError(
                    f"camera {name}: missing extrinsic, no transform chain from LiDAR frame {lidar_frame!r} "
                    f"to camera frame {frame!r}; known frames: {', '.join(buffer.frames())}"
                )
            out[name] = CameraCalibration(name=name, intrinsics=intr, frame=frame)
        return cls(buffer, out, lidar_frame, base_frame, world_frame)

    def camera(self, name: str) -> CameraCalibration:
        try:
            return self.cameras[name]
        except KeyError:
            raise CalibrationError(
                f"camera {name}: not calibrated; calibrated cameras: {', '.join(sorted(self.cameras))}"
            ) from None

    def has_poses(self) -> bool:
        return self.buffer.has_path(self.world_frame, self.base_frame)

    def camera_from_lidar(
        self, name: str, lidar_stamp_ns: int, camera_stamp_ns: int, compensate: bool = True
    ) -> Matrix4:
        """T(camera <- lidar) for one sweep/image pair (see :func:`lidar_to_camera`)."""
        cam = self.camera(name)
        try:
            return lidar_to_camera(
                self.buffer,
                self.lidar_frame,
                lidar_stamp_ns,
                cam.frame,
                camera_stamp_ns,
                self.base_frame,
                self.world_frame,
                compensate,
            )
        except TransformNotFoundError as err:
            raise TransformNotFoundError(f"camera {name}: {err}") from err
