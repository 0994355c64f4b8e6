"""Sensor rig (extrinsics, intrinsics, firing times) and the two sensor models: cameras and LiDAR.

Conventions: base_link is on the ground below the rear axle, x forward, y left, z up. Extrinsics are
``T_base_sensor`` (maps sensor coordinates into base_link). Cameras use the optical frame (z forward,
x right, y down) and a pinhole model whose integer pixel coordinates are pixel centres (OpenCV): the ray
of pixel (row r, col c) goes through u = c, v = r, so projecting a point and rounding gives its pixel.

The LiDAR spins clockwise seen from above; a sweep is stamped when its beam points forward (+x), so a
camera whose yaw is psi fires at ``-psi / 360 * period`` from the sweep stamp (front 0 ms, back -50 ms at
10 Hz), as in nuScenes. Each sweep is simulated as a snapshot at its stamp (i.e. already ego-motion
compensated); every camera image is rendered at its own stamp with the ego and the other cars where
they are at that moment, so image/LiDAR fusion needs the ego poses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.geometry.transforms import make_transform
from lidar_ssl_core.synth.config import CameraSpec, SynthConfig
from lidar_ssl_core.synth.raycast import Tiling, cast, grid_tiling, surface
from lidar_ssl_core.synth.textures import appearance, shade, sky
from lidar_ssl_core.synth.world import World
from lidar_ssl_core.types import CameraIntrinsics

F64 = npt.NDArray[np.float64]

LIDAR_FRAME = "lidar_top"
BASE_FRAME = "base_link"
WORLD_FRAME = "map"

#: Rotation from the optical frame (x right, y down, z forward) to a body frame (x fwd, y left, z up).
OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def _rot_z(angle: float) -> F64:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle: float) -> F64:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


@dataclass(frozen=True)
class SensorRig:
    """Static calibration of the ego: extrinsics, intrinsics and camera firing offsets."""

    base_to_lidar: F64  # T_base_lidar (4, 4)
    base_to_camera: dict[str, F64]  # T_base_cam (4, 4), optical frame
    intrinsics: dict[str, CameraIntrinsics]
    camera_offset_ns: dict[str, int]  # camera stamp - sweep stamp
    lidar_frame: str = LIDAR_FRAME
    base_frame: str = BASE_FRAME

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self.base_to_camera)


def camera_extrinsic(spec: CameraSpec) -> F64:
    """T_base_cam of one camera (optical frame)."""
    R = _rot_z(math.radians(spec.yaw_deg)) @ _rot_y(math.radians(spec.pitch_deg)) @ OPTICAL_TO_BODY
    return make_transform(R, [spec.x, spec.y, spec.z])


def camera_intrinsics(spec: CameraSpec, width: int, height: int) -> CameraIntrinsics:
    """Square-pixel pinhole with the principal point at the image centre."""
    f = (width / 2.0) / math.tan(math.radians(spec.hfov_deg) / 2.0)
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return CameraIntrinsics(K=K, width=width, height=height, frame_id=spec.name, D=np.zeros(5))


def build_rig(config: SynthConfig) -> SensorRig:
    lidar = make_transform(np.eye(3), [config.lidar_x, 0.0, config.lidar_z])
    period = config.period_ns
    return SensorRig(
        base_to_lidar=lidar,
        base_to_camera={c.name: camera_extrinsic(c) for c in config.cameras},
        intrinsics={
            c.name: camera_intrinsics(c, config.image_width, config.image_height) for c in config.cameras
        },
        camera_offset_ns={c.name: round(-c.yaw_deg / 360.0 * period) for c in config.cameras},
    )


@dataclass(frozen=True)
class CameraRender:
    """One rendered camera image with its per-pixel ground truth."""

    rgb: npt.NDArray[np.uint8]  # (H, W, 3)
    semantic: npt.NDArray[np.uint8]  # (H, W) class ids, 0 = sky
    instance: npt.NDArray[np.uint16]  # (H, W) object ids, 0 = stuff / sky
    depth: npt.NDArray[np.float32]  # (H, W) optical z in metres, inf = sky


class CameraModel:
    """Pre-computed pixel rays and tiles of one camera."""

    def __init__(self, intrinsics: CameraIntrinsics) -> None:
        self.intrinsics = intrinsics
        h, w = intrinsics.height, intrinsics.width
        K = intrinsics.K
        v, u = np.mgrid[0:h, 0:w].astype(np.float64)
        d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        self.z_of_unit = 1.0 / np.linalg.norm(d, axis=1)  # optical z of the unit ray
        self.dirs_cam = d * self.z_of_unit[:, None]
        tile = max(8, min(32, w // 24))
        self.tiling: Tiling = grid_tiling(h, w, tile, tile)

    def render(
        self,
        world: World,
        T_map_cam: F64,
        t_s: float,
        max_range: float,
        rng: np.random.Generator,
        noise_std: float,
    ) -> CameraRender:
        h, w = self.intrinsics.height, self.intrinsics.width
        dirs = np.einsum("ij,kj->ik", self.dirs_cam, T_map_cam[:3, :3])
        origin = T_map_cam[:3, 3]
        scene = world.primitives_at(t_s)
        hits = cast(origin, dirs, self.tiling, scene, max_range)
        surf = surface(origin, dirs, hits, scene)
        app = appearance(surf, world.cross_x)
        rgb = sky(dirs)
        rgb[surf.rays] = shade(app.albedo, surf.normal, hits.t[surf.rays])
        rgb = rgb * 255.0
        if noise_std > 0:
            rgb += rng.normal(0.0, noise_std, rgb.shape)
        semantic = np.zeros(h * w, np.uint8)
        semantic[surf.rays] = app.label
        instance = np.zeros(h * w, np.uint16)
        instance[surf.rays] = surf.instance.astype(np.uint16)
        depth = (hits.t * self.z_of_unit).astype(np.float32)
        return CameraRender(
            rgb=np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(h, w, 3),
            semantic=semantic.reshape(h, w),
            instance=instance.reshape(h, w),
            depth=depth.reshape(h, w),
        )


@dataclass(frozen=True)
class LidarSweep:
    """Returns of one sweep in the LiDAR frame, in firing order (column by column)."""

    xyz: npt.NDArray[np.float32]
    intensity: npt.NDArray[np.float32]  # 0..255
    ring: npt.NDArray[np.uint16]  # 0 = lowest beam
    label: npt.NDArray[np.uint16]
    instance: npt.NDArray[np.uint16]
    time_offset: npt.NDArray[np.float32]  # firing time of the column relative to the stamp, s


class LidarModel:
    """A spinning multi-beam LiDAR: beams evenly spread over the vertical field of view."""

    def __init__(self, config: SynthConfig) -> None:
        self.cfg = config
        elev = np.radians(np.linspace(config.lidar_fov_down_deg, config.lidar_fov_up_deg, config.lidar_beams))
        n_cols = max(1, round(360.0 / config.azimuth_resolution_deg))
        # clockwise from the back: yaw +180 -> 0 (stamp) -> -180
        az = np.radians(180.0 - (np.arange(n_cols) + 0.5) * 360.0 / n_cols)
        ee, aa = np.meshgrid(elev, az)  # (cols, beams): firing order
        self.dirs_lidar = np.stack(
            [np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], -1
        ).reshape(-1, 3)
        self.ring = np.tile(np.arange(config.lidar_beams, dtype=np.uint16), n_cols)
        self.time_offset = np.repeat(
            -np.degrees(az) / 360.0 / config.lidar_rate_hz, config.lidar_beams
        ).astype(np.float32)
        self.tiling = grid_tiling(n_cols, config.lidar_beams, 8, 4)

    def scan(self, world: World, T_map_lidar: F64, t_s: float, rng: np.random.Generator) -> LidarSweep:
        cfg = self.cfg
        dirs = np.einsum("ij,kj->ik", self.dirs_lidar, T_map_lidar[:3, :3])
        origin = T_map_lidar[:3, 3]
        scene = world.primitives_at(t_s)
        hits = cast(origin, dirs, self.tiling, scene, cfg.lidar_max_range_m)
        surf = surface(origin, dirs, hits, scene)
        app = appearance(surf, world.cross_x, need_albedo=False)
        rays = surf.rays
        t = hits.t[rays]
        cos_inc = np.abs((dirs[rays] * surf.normal).sum(1))
        noisy = t + rng.normal(0.0, cfg.lidar_range_noise_m, t.shape)
        keep_p = (1.0 - cfg.lidar_dropout) * (1.0 - app.dropout)
        power = app.reflectivity * (0.25 + 0.75 * cos_inc)
        intensity = 255.0 * np.clip(power * (1.0 + 0.06 * rng.standard_normal(t.shape)), 0.0, 1.0)
        keep = (
            (rng.random(t.shape) < keep_p)
            & (noisy >= cfg.lidar_min_range_m)
            & (noisy <= cfg.lidar_max_range_m)
        )
        keep &= power > 0.01  # too little light comes back from dark surfaces at grazing angles
        sel = rays[keep]
        xyz = self.dirs_lidar[sel] * noisy[keep, None]
        return LidarSweep(
            xyz=xyz.astype(np.float32),
            intensity=intensity[keep].astype(np.float32),
            ring=self.ring[sel],
            label=app.label[keep].astype(np.uint16),
            instance=surf.instance[keep].astype(np.uint16),
            time_offset=self.time_offset[sel],
        )
