"""Procedural synthetic driving world: the embedded default dataset.

A seeded street (road, lane markings, sidewalks, buildings, trees, parked and moving cars, pedestrians,
street lights, grass) is ray cast with numpy into a 32-beam LiDAR (intensity, ring, per-point class)
and a six-camera rig (RGB, per-pixel class and instance), with calibration and ego poses. The same
class looks alike in both sensors (texture/colour, geometry/reflectivity), which is what image-to-LiDAR
distillation learns from. See ``classes`` for the id table, ``config`` for the presets.

Typical use::

    cfg = preset("sample")
    world = generate_world(cfg)
    for frame in simulate(world):
        ...
    write_synthetic_bag(Path("rosbags/synthetic_sample"), cfg)
"""

from __future__ import annotations

from lidar_ssl_core.synth.classes import CLASS_NAMES, NUM_CLASSES, PALETTE, colorize
from lidar_ssl_core.synth.config import PRESETS, CameraSpec, SynthConfig, make_config, nuscenes_rig, preset
from lidar_ssl_core.synth.sensors import SensorRig, build_rig
from lidar_ssl_core.synth.simulate import SynthCameraFrame, SynthFrame, simulate
from lidar_ssl_core.synth.world import World, generate_world

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "PALETTE",
    "PRESETS",
    "CameraSpec",
    "SensorRig",
    "SynthCameraFrame",
    "SynthConfig",
    "SynthFrame",
    "World",
    "build_rig",
    "colorize",
    "generate_world",
    "make_config",
    "nuscenes_rig",
    "preset",
    "simulate",
    "write_synthetic_bag",
]


def __getattr__(name: str) -> object:
    # the bag writer pulls in rosbags; import it only when asked for
    if name == "write_synthetic_bag":
        from lidar_ssl_core.synth.bagfile import write_synthetic_bag

        return write_synthetic_bag
    raise AttributeError(name)
