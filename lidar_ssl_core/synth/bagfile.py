"""Write a synthetic drive as a bag in the project profile (docs/bag-profile.md).

Topics: ``/tf_static`` (latched extrinsics), ``/tf`` (``map -> base_link`` at every LiDAR and camera
stamp), ``/lidar/points`` (x y z intensity float32, ring uint16, label uint16; no per-point time),
``/cameras/<name>/image/compressed`` (JPEG) and ``/cameras/<name>/camera_info``. Log time = header stamp;
messages are written in stamp order, as a recorder would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.bag_formats import Distro, Storage
from lidar_ssl_core.config import ProfileConfig
from lidar_ssl_core.msg.camera_info import make_camera_info
from lidar_ssl_core.msg.image import make_compressed_image
from lidar_ssl_core.msg.pointcloud2 import make_pointcloud2
from lidar_ssl_core.msg.tf import make_tf_message
from lidar_ssl_core.synth.config import SynthConfig
from lidar_ssl_core.synth.sensors import BASE_FRAME, WORLD_FRAME, SensorRig, build_rig
from lidar_ssl_core.synth.simulate import SynthFrame, simulate
from lidar_ssl_core.synth.world import generate_world
from lidar_ssl_core.types import StampedTransform

_POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
_COMPRESSED = "sensor_msgs/msg/CompressedImage"
_CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
_TF = "tf2_msgs/msg/TFMessage"


def write_synthetic_bag(
    path: Path,
    config: SynthConfig,
    *,
    distro: Distro = "jazzy",
    storage: Storage = "mcap",
    overwrite: bool = False,
    profile: ProfileConfig | None = None,
) -> Path:
    """Generate the world of ``config``, drive through it and write every sensor to ``path``."""
    topics = profile or ProfileConfig()
    rig = build_rig(config)
    world = generate_world(config)
    with BagWriter(Path(path), distro=distro, storage=storage, overwrite=overwrite) as writer:
        ts = writer.typestore
        writer.add_topic(topics.tf_static_topic, _TF, latched=True)
        writer.add_topic(topics.tf_topic, _TF)
        writer.add_topic(topics.lidar_topic, _POINTCLOUD2)
        for name in rig.camera_names:
            writer.add_topic(topics.image_topic(name), _COMPRESSED)
            writer.add_topic(topics.info_topic(name), _CAMERA_INFO)

        first_stamp = config.start_stamp_ns + min([0, *rig.camera_offset_ns.values()])
        static = [StampedTransform(rig.base_frame, rig.lidar_frame, first_stamp, rig.base_to_lidar)]
        static += [
            StampedTransform(rig.base_frame, name, first_stamp, T) for name, T in rig.base_to_camera.items()
        ]
        writer.write(topics.tf_static_topic, first_stamp, make_tf_message(ts, static))

        for frame in simulate(world, config, rig):
            messages = _frame_messages(frame, config, rig, ts, topics)
            for stamp, topic, msg in sorted(messages, key=lambda m: (m[0], m[1])):
                writer.write(topic, stamp, msg)
    return Path(path)


def _frame_messages(
    frame: SynthFrame, config: SynthConfig, rig: SensorRig, ts: object, topics: ProfileConfig
) -> list[tuple[int, str, object]]:
    """Every message of one frame as (stamp, topic, message)."""
    sweep = frame.lidar
    columns: dict[str, np.ndarray] = {
        "x": sweep.xyz[:, 0],
        "y": sweep.xyz[:, 1],
        "z": sweep.xyz[:, 2],
        "intensity": sweep.intensity,
        "ring": sweep.ring,
        topics.label_field: sweep.label,
        # no per-point "time": each synthetic sweep is a snapshot at its stamp (already deskewed)
    }
    out: list[tuple[int, str, object]] = [
        (frame.stamp_ns, topics.lidar_topic, make_pointcloud2(ts, columns, frame.stamp_ns, rig.lidar_frame)),
        (frame.stamp_ns, topics.tf_topic, _pose_message(ts, frame.stamp_ns, frame.ego_pose)),
    ]
    pose_stamps = {frame.stamp_ns}
    for name, cam in frame.cameras.items():
        if cam.stamp_ns not in pose_stamps:  # one ego pose per distinct sensor stamp
            pose_stamps.add(cam.stamp_ns)
            out.append((cam.stamp_ns, topics.tf_topic, _pose_message(ts, cam.stamp_ns, cam.ego_pose)))
        image = make_compressed_image(
            ts, cam.rgb, cam.stamp_ns, name, fmt="jpeg", quality=config.jpeg_quality
        )
        out.append((cam.stamp_ns, topics.image_topic(name), image))
        info = make_camera_info(ts, rig.intrinsics[name], cam.stamp_ns)
        out.append((cam.stamp_ns, topics.info_topic(name), info))
    return out


def _pose_message(ts: object, stamp_ns: int, T_map_base: np.ndarray) -> object:
    return make_tf_message(ts, [StampedTransform(WORLD_FRAME, BASE_FRAME, stamp_ns, T_map_base)])
