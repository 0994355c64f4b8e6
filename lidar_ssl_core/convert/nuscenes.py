"""nuScenes dataroot -> one bag per scene, read with the official ``nuscenes-devkit``.

The devkit is only needed to plan (tables -> per-scene lists of files, stamps and transforms); the
plans are plain data, so scenes are written in worker processes without loading the tables again.

Per scene: every LIDAR_TOP sample_data (keyframes and sweeps) -> ``/lidar/points`` (x y z intensity
float32, ring uint16; ``label`` uint16 = raw lidarseg id 0-31 on keyframes when the dataroot has
lidarseg), every CAM_* sample_data -> ``/cameras/cam_<...>/image/compressed`` (original JPEG bytes) +
``camera_info`` (K from calibrated_sensor, zero plumb_bob distortion: nuScenes images are undistorted),
each stamped with its own timestamp (µs -> ns). ``/tf_static``: ``base_link -> lidar_top`` and ``base_link
-> cam_<...>`` from calibrated_sensor; ``/tf``: the ego pose of every sample_data at its own stamp.
Radars are not converted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.bag_formats import CLASS_MAP_KEY
from lidar_ssl_core.convert.common import (
    LIDAR_FRAME,
    ConvertOptions,
    ConvertSummary,
    EventList,
    ProgressCallback,
    Topics,
    add_profile_topics,
    check_consistent_stamps,
    execute,
    image_message,
    info_message,
    lidar_message,
    plan_failure,
    read_bytes,
    read_float_records,
    read_labels,
    tf_message,
)
from lidar_ssl_core.errors import ConfigError, DatasetError
from lidar_ssl_core.geometry.transforms import Matrix4, transform_from_quat
from lidar_ssl_core.types import CameraIntrinsics, StampedTransform

log = logging.getLogger(__name__)

LIDAR_CHANNEL = "LIDAR_TOP"
CAMERA_CHANNELS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_FRONT_LEFT",
)


def camera_name(channel: str) -> str:
    """nuScenes channel -> camera name (topic namespace and frame id): CAM_FRONT_LEFT -> cam_front_left."""
    return channel.lower()


def nus_transform(record: dict[str, Any]) -> Matrix4:
    """calibrated_sensor / ego_pose record -> 4x4 (child into parent); nuScenes quaternions are w, x, y, z."""
    w, x, y, z = (float(v) for v in record["rotation"])
    return transform_from_quat([float(v) for v in record["translation"]], [x, y, z, w])


@dataclass(frozen=True)
class SweepItem:
    stamp_ns: int
    path: Path
    label_path: Path | None


@dataclass(frozen=True)
class ImageRecord:
    stamp_ns: int
    camera: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class SceneUnit:
    """Everything needed to write one scene (plain data, picklable)."""

    name: str
    sweeps: tuple[SweepItem, ...]
    images: tuple[ImageRecord, ...]
    extrinsics: tuple[tuple[str, Matrix4], ...]  # frame -> T(base_link <- frame)
    intrinsics: tuple[tuple[str, Matrix4], ...]  # camera -> K
    poses: tuple[tuple[int, Matrix4], ...]  # T(map <- base_link) per distinct stamp

    def input_files(self) -> list[Path]:
        files = [s.path for s in self.sweeps] + [s.label_path for s in self.sweeps if s.label_path]
        return files + [i.path for i in self.images]

    @property
    def n_frames(self) -> int:
        return len(self.sweeps)

    def write(self, writer: BagWriter, profile: Topics, advance: Callable[[int], None]) -> None:
        K = dict(self.intrinsics)
        cameras = [c for c, _ in self.intrinsics]
        add_profile_topics(writer, profile, cameras, poses=bool(self.poses))
        if any(s.label_path for s in self.sweeps):  # lidarseg ids: downstream picks the nuscenes map
            writer.set_custom_data(CLASS_MAP_KEY, "nuscenes")
        events = EventList()
        for i, sweep in enumerate(self.sweeps):
            events.add(sweep.stamp_ns, "lidar", i)
        for i, image in enumerate(self.images):
            events.add(image.stamp_ns, "image", i)
        for i, (stamp, _) in enumerate(self.poses):
            events.add(stamp, "tf", i)
        first = events.first_stamp
        static = [StampedTransform(profile.base_frame, frame, first, T) for frame, T in self.extrinsics]
        writer.write(profile.tf_static_topic, first, tf_message(writer, static))
        for ev in events.sorted():
            if ev.kind == "lidar":
                sweep = self.sweeps[ev.key]
                columns, n = _sweep_columns(sweep)
                writer.write(profile.lidar_topic, ev.stamp_ns, lidar_message(writer, columns, ev.stamp_ns))
                advance(n)
            elif ev.kind == "image":
                img = self.images[ev.key]
                data = read_bytes(img.path, "image")
                msg = image_message(writer, data, ev.stamp_ns, img.camera, img.path, (img.width, img.height))
                intr = CameraIntrinsics(
                    K=K[img.camera], width=img.width, height=img.height, frame_id=img.camera, D=np.zeros(5)
                )
                writer.write(
                    profile.info_topic(img.camera), ev.stamp_ns, info_message(writer, intr, ev.stamp_ns)
                )
                writer.write(profile.image_topic(img.camera), ev.stamp_ns, msg)
                advance(len(data))
            else:
                stamp, T = self.poses[ev.key]
                pose = StampedTransform(profile.world_frame, profile.base_frame, stamp, T)
                writer.write(profile.tf_topic, stamp, tf_message(writer, [pose]))


def _sweep_columns(sweep: SweepItem) -> tuple[dict[str, np.ndarray], int]:
    points, n = read_float_records(sweep.path, 5, "nuScenes LiDAR")
    ring = points[:, 4]
    columns: dict[str, np.ndarray] = {
        "x": points[:, 0],
        "y": points[:, 1],
        "z": points[:, 2],
        "intensity": points[:, 3],
        "ring": ring.astype(np.uint16),
    }
    if sweep.label_path is not None:
        labels, n_label = read_labels(sweep.label_path, "u1", points.shape[0], "lidarseg")
        columns["label"] = labels.astype(np.uint16)
        n += n_label
    return columns, n


# ------------------------------------------------------------------------------------------ planning
def load_nuscenes(dataroot: Path, version: str) -> Any:
    """The devkit's NuScenes object; missing devkit or dataroot are clear errors."""
    try:
        from nuscenes.nuscenes import NuScenes
    except ImportError as err:
        raise ConfigError(
            "converting nuScenes needs the 'nuscenes-devkit' package (pip install nuscenes-devkit, or the "
            f"project's 'convert' extra): {err}"
        ) from err
    table_root = Path(dataroot) / version
    if not table_root.is_dir():
        raise DatasetError(f"nuScenes tables {table_root} do not exist (check --dataroot and --version)")
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (AssertionError, KeyError, ValueError, OSError) as err:
        raise DatasetError(f"nuScenes devkit cannot load {table_root}: {type(err).__name__}: {err}") from err


def plan_nuscenes(
    dataroot: Path, version: str, scenes: Sequence[str] | None = None, *, sweeps: bool = True
) -> tuple[list[SceneUnit], list[tuple[str, str]]]:
    """One unit per scene (all, or the named ones), and (scene, error) of scenes whose tables are broken."""
    nusc = load_nuscenes(dataroot, version)
    by_name = {s["name"]: s for s in nusc.scene}
    names = list(by_name) if not scenes else list(scenes)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DatasetError(f"scenes {unknown} are not in {version} (first scenes: {sorted(by_name)[:5]})")
    labels = {r["sample_data_token"]: r["filename"] for r in getattr(nusc, "lidarseg", [])}
    units, problems = [], []
    for name in names:
        try:
            units.append(_plan_scene(nusc, Path(dataroot), by_name[name], labels, sweeps))
        except KeyError as err:
            problems.append((name, f"a table does not match: token {err} is referenced but missing"))
        except Exception as err:  # one odd scene must not stop the others (as run_unit does per bag)
            problems.append(plan_failure("scene", name, err))
    return units, problems


def _channel_records(nusc: Any, scene: dict[str, Any], channel: str, sweeps: bool) -> list[dict[str, Any]]:
    """Every sample_data of ``channel`` in the scene, in time order (sweeps included unless told)."""
    sample_tokens = set()
    token = scene["first_sample_token"]
    first_sample = nusc.get("sample", token)
    while token:
        sample_tokens.add(token)
        token = nusc.get("sample", token)["next"]
    if channel not in first_sample["data"]:
        return []
    sd = nusc.get("sample_data", first_sample["data"][channel])
    while sd["prev"]:  # sweeps recorded before the first keyframe
        prev = nusc.get("sample_data", sd["prev"])
        if prev["sample_token"] not in sample_tokens:
            break
        sd = prev
    out = []
    while True:
        if sd["sample_token"] not in sample_tokens:
            break
        if sweeps or sd["is_key_frame"]:
            out.append(sd)
        if not sd["next"]:
            break
        sd = nusc.get("sample_data", sd["next"])
    return out


def _plan_scene(
    nusc: Any, root: Path, scene: dict[str, Any], labels: dict[str, str], sweeps: bool
) -> SceneUnit:
    name = scene["name"]
    extrinsics: dict[str, Matrix4] = {}
    intrinsics: dict[str, Matrix4] = {}
    poses: dict[int, Matrix4] = {}
    sweep_items: list[SweepItem] = []
    images: list[ImageRecord] = []
    for channel in (LIDAR_CHANNEL, *CAMERA_CHANNELS):
        records = _channel_records(nusc, scene, channel, sweeps)
        if not records:
            log.warning("scene %s has no %s data", name, channel)
            continue
        frame = LIDAR_FRAME if channel == LIDAR_CHANNEL else camera_name(channel)
        check_consistent_stamps(
            [int(r["timestamp"]) * 1000 for r in records], f"scene {name}: {channel} sample_data timestamps"
        )
        cs_tokens = {r["calibrated_sensor_token"] for r in records}
        if len(cs_tokens) != 1:
            raise DatasetError(f"scene {name}: {channel} has {len(cs_tokens)} calibrations; expected one")
        cs = nusc.get("calibrated_sensor", cs_tokens.pop())
        extrinsics[frame] = nus_transform(cs)
        if channel != LIDAR_CHANNEL:
            K = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
            if K.shape != (3, 3):
                raise DatasetError(
                    f"scene {name}: calibrated_sensor {cs['token']} of {channel} has no 3x3 camera_intrinsic"
                )
            intrinsics[frame] = K
        for sd in records:
            stamp = int(sd["timestamp"]) * 1000
            poses.setdefault(stamp, nus_transform(nusc.get("ego_pose", sd["ego_pose_token"])))
            path = root / sd["filename"]
            if channel == LIDAR_CHANNEL:
                label = labels.get(sd["token"]) if sd["is_key_frame"] else None
                sweep_items.append(SweepItem(stamp, path, root / label if label else None))
            else:
                images.append(ImageRecord(stamp, frame, path, int(sd["width"]), int(sd["height"])))
    if not sweep_items:
        raise DatasetError(f"scene {name} has no {LIDAR_CHANNEL} data")
    return SceneUnit(
        name=name,
        sweeps=tuple(sweep_items),
        images=tuple(images),
        extrinsics=tuple(extrinsics.items()),
        intrinsics=tuple(intrinsics.items()),
        poses=tuple(sorted(poses.items(), key=lambda p: p[0])),
    )


def convert_nuscenes(
    dataroot: Path,
    version: str,
    options: ConvertOptions,
    *,
    scenes: Sequence[str] | None = None,
    sweeps: bool = True,
    progress: ProgressCallback | None = None,
    dry_run: bool = False,
) -> ConvertSummary:
    """Convert the scenes of a nuScenes dataroot; one bag per scene at ``options.out_dir/<scene name>``."""
    units, problems = plan_nuscenes(dataroot, version, scenes, sweeps=sweeps)
    return execute(units, options, plan_failures=problems, progress=progress, dry=dry_run)
