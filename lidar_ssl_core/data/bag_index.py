"""One pass over a bag: its calibration, its ego poses, and the index of synchronised frames.

The pass reads every message of the profile's topics once, in log-time order: ``/tf_static`` and
``CameraInfo`` give the rig calibration, ``/tf`` the ego poses, and LiDAR + image stamps go through the
same ``LidarCameraSynchronizer`` the live nodes use. Only stamps and small records are kept, so indexing
a long bag needs little memory; the frames themselves are decoded later, on demand
(:mod:`lidar_ssl_core.data.frames`).

Nothing here stops on one bad message: a message that cannot be converted is logged and counted in
:class:`IndexReport` under its topic and reason, and the frame it belonged to loses that camera (or the
whole frame, for a bad sweep).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.config import DataConfig, ProfileConfig
from lidar_ssl_core.errors import CalibrationError, DatasetError, LidarSslError, MessageError
from lidar_ssl_core.geometry.calibration import RigCalibration
from lidar_ssl_core.geometry.projection import distort
from lidar_ssl_core.geometry.tf_buffer import TransformBuffer
from lidar_ssl_core.msg.camera_info import camera_info_to_intrinsics
from lidar_ssl_core.msg.image import DEFAULT_MAX_IMAGE_PIXELS, compressed_image_size, image_to_array
from lidar_ssl_core.msg.pointcloud2 import read_cloud
from lidar_ssl_core.msg.stamps import header_stamp_ns
from lidar_ssl_core.msg.tf import tf_message_to_transforms
from lidar_ssl_core.sync import LidarCameraSynchronizer, SyncStats
from lidar_ssl_core.types import CameraIntrinsics

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image")
OFFLINE_QUEUE = 1 << 30


@dataclass(frozen=True)
class MessageRef:
    """Where one message is in its bag (for random access) and the stamp it carries."""

    topic: str
    log_time_ns: int
    stamp_ns: int


@dataclass(frozen=True)
class CameraView:
    """One camera of a frame: its image message and T(camera <- lidar) for this sweep/image pair."""

    camera: str
    image: MessageRef
    T_cam_lidar: npt.NDArray[np.float64]  # (4, 4), ego motion between the two stamps included


@dataclass(frozen=True)
class FrameRef:
    """A synchronised frame: one sweep and the cameras that matched it."""

    lidar: MessageRef
    views: tuple[CameraView, ...]


@dataclass
class IndexReport:
    """What the indexing pass found, kept and dropped, and why."""

    cameras: tuple[str, ...] = ()
    sweeps: int = 0
    frames: int = 0
    bad_messages: Counter[str] = field(default_factory=Counter)  # "topic: reason" -> count
    dropped_views: Counter[str] = field(default_factory=Counter)  # reason -> count
    uncalibrated: dict[str, str] = field(default_factory=dict)  # camera -> why it is left out
    sync: SyncStats | None = None
    storage_errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line (used by the CLI and logs)."""
        out = [
            f"cameras: {', '.join(self.cameras) or '(none)'}",
            f"sweeps: {self.sweeps}, frames: {self.frames}",
        ]
        out += [f"camera {c} left out: {why}" for c, why in self.uncalibrated.items()]
        out += [f"bad message {k}: {n}" for k, n in sorted(self.bad_messages.items())]
        out += [f"camera views dropped ({k}): {n}" for k, n in sorted(self.dropped_views.items())]
        out += [f"storage: {e}" for e in self.storage_errors]
        if self.sync is not None:
            st = self.sync
            out.append(
                f"sync: {st.groups_emitted} groups ({st.groups_partial} with a camera missing), "
                f"sweeps dropped: {st.lidar_without_cameras} without any camera, "
                f"{st.stale_lidar} out of order, {st.duplicate_lidar} duplicate; "
                f"images: {st.camera_used} used, {st.camera_unused} unused, "
                f"{st.stale_camera} stale, {st.duplicate_camera} duplicate"
            )
            missing = {c: n for c, n in st.missing_per_camera.items() if n}
            if missing:
                out.append(f"sweeps without an image within slop, per camera: {missing}")
        return out


@dataclass(frozen=True)
class BagIndex:
    """Everything needed to load any frame of one bag by position."""

    path: Path
    lidar_topic: str
    lidar_frame: str
    rig: RigCalibration
    frames: tuple[FrameRef, ...]
    report: IndexReport

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def intrinsics(self) -> dict[str, CameraIntrinsics]:
        return {name: cam.intrinsics for name, cam in self.rig.cameras.items()}


def _topic_regex(pattern: str) -> re.Pattern[str]:
    head, _, tail = pattern.partition("{camera}")
    return re.compile(re.escape(head) + r"(?P<camera>[^/]+)" + re.escape(tail) + r"$")


def camera_image_topics(profile: ProfileConfig, topics: dict[str, str]) -> dict[str, str]:
    """camera name -> image topic, from the profile pattern (compressed) or its raw-image sibling.

    With ``profile.cameras`` empty every matching camera is used; a listed camera without an image topic
    is a ``DatasetError`` naming the topics tried.
    """
    patterns = [profile.camera_image_topic]
    if profile.camera_image_topic.endswith("/compressed"):
        patterns.append(profile.camera_image_topic.removesuffix("/compressed"))
    found: dict[str, str] = {}
    for pattern in patterns:
        regex = _topic_regex(pattern)
        for topic, msgtype in topics.items():
            match = regex.match(topic)
            if match and msgtype in IMAGE_TYPES:
                found.setdefault(match["camera"], topic)
    if not profile.cameras:
        return dict(sorted(found.items()))
    missing = [c for c in profile.cameras if c not in found]
    if missing:
        tried = [p.format(camera=missing[0]) for p in patterns]
        raise DatasetError(
            f"camera(s) {missing} have no image topic (tried {tried}); cameras in the bag: {sorted(found)}"
        )
    return {c: found[c] for c in profile.cameras}


@dataclass
class _Scan:
    """Mutable state of the indexing pass."""

    buffer: TransformBuffer
    intrinsics: dict[str, CameraIntrinsics] = field(default_factory=dict)
    lidar_frame: str | None = None
    groups: list[Any] = field(default_factory=list)
    report: IndexReport = field(default_factory=IndexReport)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def index_bag(path: Path, config: DataConfig) -> BagIndex:
    """Scan ``path`` once and return its calibration and frame index (see module docstring)."""
    profile = config.profile
    with BagReader(path) as reader:
        topics = reader.topics
        reader.require_topic(profile.lidar_topic, "sensor_msgs/msg/PointCloud2")
        image_topics = camera_image_topics(profile, topics)
        if not image_topics:
            raise DatasetError(
                f"{path}: no camera image topic matches {profile.camera_image_topic!r}; "
                f"topics: {sorted(topics)} (set data.profile.camera_image_topic)"
            )
        camera_of_image = {t: c for c, t in image_topics.items()}
        info_topics = {profile.info_topic(c): c for c in image_topics if profile.info_topic(c) in topics}
        tf_topics = [t for t in (profile.tf_static_topic, profile.tf_topic) if t in topics]
        scan = _Scan(buffer=TransformBuffer(), max_image_pixels=config.loader.max_image_pixels)
        scan.report.cameras = tuple(image_topics)
        # Offline the queues may be as long as the bag needs: only small refs are held, and bounded queues
        # would make the pairing depend on how late the recorder logged each message. require_all is
        # applied after calibration (a camera left out for calibration must not veto every sweep).
        sync: LidarCameraSynchronizer[MessageRef, MessageRef] = LidarCameraSynchronizer(
            list(image_topics),
            round(config.sync.slop_s * 1e9),
            queue_size=OFFLINE_QUEUE,
            require_all=False,
            max_pending=OFFLINE_QUEUE,
        )
        wanted = [profile.lidar_topic, *image_topics.values(), *info_topics, *tf_topics]
        for message in reader.messages(wanted, on_error="skip"):
            try:
                _consume(
                    message.topic,
                    message.log_time_ns,
                    message.msg,
                    profile,
                    camera_of_image,
                    info_topics,
                    scan,
                    sync,
                )
            except (LidarSslError, ValueError) as err:
                reason = err.reason if isinstance(err, MessageError) else str(err)
                key = f"{message.topic}: {reason[:100]}"
                if key not in scan.report.bad_messages:
                    log.warning(
                        "%s: skipping message on %s at t=%d: %s",
                        path,
                        message.topic,
                        message.log_time_ns,
                        reason,
                    )
                scan.report.bad_messages[key] += 1
        scan.groups.extend(sync.flush())
        scan.report.sync = sync.stats
        scan.report.storage_errors = list(reader.stats.storage_errors)
        for topic, reasons in reader.stats.skipped.items():
            for reason, n in reasons.items():
                scan.report.bad_messages[f"{topic}: {reason[:100]}"] += n
    return _assemble(path, profile, config, scan)


def _consume(
    topic: str,
    log_time_ns: int,
    msg: Any,
    profile: ProfileConfig,
    camera_of_image: dict[str, str],
    info_topics: dict[str, str],
    scan: _Scan,
    sync: LidarCameraSynchronizer[MessageRef, MessageRef],
) -> None:
    if topic == profile.tf_static_topic:
        scan.buffer.add_many(tf_message_to_transforms(msg), static=True)
    elif topic == profile.tf_topic:
        scan.buffer.add_many(tf_message_to_transforms(msg), static=False)
    elif topic in info_topics:
        camera = info_topics[topic]
        if camera not in scan.intrinsics:
            scan.intrinsics[camera] = camera_info_to_intrinsics(msg)
    elif topic == profile.lidar_topic:
        stamp = header_stamp_ns(msg)
        names = read_cloud(msg, reshape_organized=False).dtype.names or ()  # zero-copy layout check
        missing = [c for c in "xyz" if c not in names]
        if missing:
            raise MessageError(f"PointCloud2 has no field(s) {missing}", topic=topic, stamp_ns=stamp)
        frame = str(msg.header.frame_id).lstrip("/")
        if scan.lidar_frame is None:
            scan.lidar_frame = frame
        elif frame != scan.lidar_frame:
            raise MessageError(
                f"frame_id {frame!r} differs from the first sweep's {scan.lidar_frame!r}",
                topic=topic,
                stamp_ns=stamp,
            )
        scan.report.sweeps += 1
        scan.groups.extend(sync.add_lidar(stamp, MessageRef(topic, log_time_ns, stamp)))
    else:
        camera = camera_of_image[topic]
        stamp = header_stamp_ns(msg)
        if hasattr(msg, "format"):
            # reads the JPEG/PNG header: rejects undecodable data and absurd claimed sizes early
            compressed_image_size(msg, max_pixels=scan.max_image_pixels)
        else:
            image_to_array(msg)  # zero-copy view: checks encoding, step and data length
        scan.groups.extend(sync.add_camera(camera, stamp, MessageRef(topic, log_time_ns, stamp)))


def _assemble(path: Path, profile: ProfileConfig, config: DataConfig, scan: _Scan) -> BagIndex:
    report = scan.report
    if scan.lidar_frame is None:
        raise DatasetError(
            f"{path}: no readable sweep on {profile.lidar_topic}; " + "; ".join(report.lines())
        )
    calibrated: dict[str, CameraIntrinsics] = {}
    for camera in report.cameras:
        if camera not in scan.intrinsics:
            report.uncalibrated[camera] = f"no valid CameraInfo on {profile.info_topic(camera)}"
            continue
        intrinsics = scan.intrinsics[camera]
        try:
            RigCalibration.build(
                scan.buffer,
                {camera: intrinsics},
                scan.lidar_frame,
                base_frame=profile.base_frame,
                world_frame=profile.world_frame,
            )
            if intrinsics.is_distorted:  # an unsupported distortion model fails here, not every frame
                distort(np.zeros(1), np.zeros(1), intrinsics)
        except CalibrationError as err:
            report.uncalibrated[camera] = str(err)
            continue
        calibrated[camera] = scan.intrinsics[camera]
    for camera, why in report.uncalibrated.items():
        log.warning("%s: camera %s is left out: %s", path, camera, why)
    if not calibrated:
        raise CalibrationError(
            f"{path}: no camera is calibrated: "
            + "; ".join(f"{c}: {why}" for c, why in report.uncalibrated.items())
        )
    rig = RigCalibration.build(
        scan.buffer,
        calibrated,
        scan.lidar_frame,
        base_frame=profile.base_frame,
        world_frame=profile.world_frame,
    )
    compensate = config.projection.ego_motion_compensation
    frames: list[FrameRef] = []
    for group in scan.groups:
        views: list[CameraView] = []
        for camera in report.cameras:  # the configured (or sorted) camera order
            match = group.cameras.get(camera)
            if match is None:
                continue
            if camera not in calibrated:
                report.dropped_views["camera not calibrated"] += 1
                continue
            try:
                T = rig.camera_from_lidar(camera, group.lidar_stamp_ns, match.stamp_ns, compensate)
            except CalibrationError as err:
                report.dropped_views["no ego pose at the stamps"] += 1
                log.debug("%s: %s", path, err)
                continue
            views.append(CameraView(camera, match.item, T))
        if not views:
            report.dropped_views["sweep without any usable camera"] += 1
            continue
        if config.sync.require_all_cameras and len(views) < len(calibrated):
            report.dropped_views["sweep without every camera (require_all_cameras)"] += 1
            continue
        frames.append(FrameRef(group.lidar, tuple(views)))
    report.frames = len(frames)
    if not frames:
        raise DatasetError(f"{path}: no synchronised frame; " + "; ".join(report.lines()))
    return BagIndex(path, profile.lidar_topic, scan.lidar_frame, rig, tuple(frames), report)
