"""Drive the ego through the world and record LiDAR sweeps and camera images with ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.synth.config import SynthConfig
from lidar_ssl_core.synth.sensors import CameraModel, LidarModel, LidarSweep, SensorRig, build_rig
from lidar_ssl_core.synth.world import World

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SynthCameraFrame:
    """One camera image with its stamp, the ego pose at that stamp and per-pixel ground truth."""

    name: str
    stamp_ns: int
    ego_pose: F64  # T_map_base at stamp_ns
    rgb: npt.NDArray[np.uint8]  # (H, W, 3)
    semantic: npt.NDArray[np.uint8]  # (H, W)
    instance: npt.NDArray[np.uint16]  # (H, W)
    depth: npt.NDArray[np.float32]  # (H, W) optical z, inf for sky


@dataclass(frozen=True)
class SynthFrame:
    """One LiDAR sweep (in the LiDAR frame) and the images of every camera around it."""

    index: int
    stamp_ns: int
    ego_pose: F64  # T_map_base at stamp_ns
    lidar: LidarSweep
    cameras: dict[str, SynthCameraFrame]


def _seconds(config: SynthConfig, stamp_ns: int) -> float:
    return (stamp_ns - config.start_stamp_ns) * 1e-9


def simulate(
    world: World, config: SynthConfig | None = None, rig: SensorRig | None = None
) -> Iterator[SynthFrame]:
    """Yield ``config.n_frames`` frames; byte-identical for the same config (random streams per frame)."""
    cfg = config if config is not None else world.config
    rig = rig if rig is not None else build_rig(cfg)
    lidar = LidarModel(cfg)
    cams = {name: CameraModel(rig.intrinsics[name]) for name in rig.camera_names}
    for k in range(cfg.n_frames):
        stamp = cfg.start_stamp_ns + k * cfg.period_ns
        t = _seconds(cfg, stamp)
        pose = world.ego.pose(t)
        rng = np.random.default_rng([cfg.seed, k, 1])
        sweep = lidar.scan(world, pose @ rig.base_to_lidar, t, rng)
        frames: dict[str, SynthCameraFrame] = {}
        for i, (name, model) in enumerate(cams.items()):
            c_stamp = stamp + rig.camera_offset_ns[name]
            c_t = _seconds(cfg, c_stamp)
            c_pose = world.ego.pose(c_t)
            render = model.render(
                world,
                c_pose @ rig.base_to_camera[name],
                c_t,
                cfg.camera_max_range_m,
                np.random.default_rng([cfg.seed, k, 2, i]),
                cfg.image_noise_std,
            )
            frames[name] = SynthCameraFrame(
                name, c_stamp, c_pose, render.rgb, render.semantic, render.instance, render.depth
            )
        yield SynthFrame(k, stamp, pose, sweep, frames)
