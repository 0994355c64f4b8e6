"""Write a copy of a bag with a segmentation topic that RViz and Foxglove colour directly.

Every message of the input is copied byte for byte (``BagWriter.write_raw``: no decode/encode, custom
types included) with its log time and its topic's latching (transient-local topics such as
``/tf_static`` stay latched). For each LiDAR sweep one ``sensor_msgs/PointCloud2`` is added on
``topic_out`` with the sweep's header stamp, frame and log time, in the layout of
:func:`lidar_ssl_core.deploy.cloud.build_segmented_cloud` (the one the live node publishes too; every
field aligned to its size):

- ``x y z intensity`` (float32),
- ``rgb`` (float32): the class colour packed as PCL does (bytes of the uint32 ``0x00RRGGBB``), the
  "rgb" field RViz's RGB8 transformer and Foxglove's "RGB (packed)" colour mode read,
- ``label`` (uint16): the predicted training id, ``class_map.ignore_index`` where there is none,
- ``score`` (float32): the softmax probability of the label, when the predictor gives scores (the
  inference engine's :class:`~lidar_ssl_core.deploy.engine.Segmentation` does).

Non-finite points keep their place: the output cloud has the input's points in the input's order
(and shape, for organized clouds), so it lines up index for index with the source sweep. The
predictor sees only the finite points; non-finite ones are labelled ``ignore_index`` and keep their
NaN coordinates (``is_dense`` is then false). A sweep that cannot be decoded is copied unchanged,
gets no segmentation message and is counted in the report; an exception raised by the predictor
stops the run and nothing appears at ``out_bag`` (the writer is atomic).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection, ConnectionExtRosbag2, QosDurability

from lidar_ssl_core.bag.typestore import default_read_typestore
from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.config import ProfileConfig
from lidar_ssl_core.deploy.cloud import build_segmented_cloud, pack_rgb, unpack_rgb
from lidar_ssl_core.downstream.classes import ClassMap, remap
from lidar_ssl_core.errors import BagReadError, ConfigError, DatasetError, MessageError
from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud_counted
from lidar_ssl_core.msg.stamps import make_header
from lidar_ssl_core.types import PointCloud

log = logging.getLogger(__name__)

Distro = Literal["humble", "jazzy", "kilted"]
Storage = Literal["mcap", "sqlite3"]
Predictor = Callable[[PointCloud], Any]
"""A sweep's finite points -> ``(N,)`` integer training ids, or an object with ``labels`` and ``scores``
(N,) arrays such as :class:`~lidar_ssl_core.deploy.engine.Segmentation`."""

_POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"


@dataclass
class SegmentBagReport:
    """What ``write_segmented_bag`` did."""

    out_bag: Path
    topic_out: str
    sweeps_written: int = 0
    points_written: int = 0
    points_labelled: int = 0  # points given a training id (not ignore_index)
    points_nonfinite: int = 0
    messages_copied: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> sweeps without segmentation

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())


def label_passthrough(class_map: ClassMap) -> Predictor:
    """A predictor that returns the sweep's own ``label`` field remapped (ground truth, for viewing)."""

    def predict(cloud: PointCloud) -> npt.NDArray[np.integer]:
        if cloud.label is None:
            raise DatasetError(f"sweep at t={cloud.stamp_ns} has no label field to pass through")
        return remap(cloud.label, class_map)

    return predict


def _input_format(path: Path) -> tuple[Distro, Storage]:
    """Distro and storage recorded in the input bag (jazzy / mcap when unknown)."""
    distro: Distro = "jazzy"
    storage: Storage = "sqlite3" if path.suffix == ".db3" else "mcap"
    meta = path / "metadata.yaml"
    if path.is_dir() and meta.is_file():
        try:
            info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information", {})
        except (OSError, yaml.YAMLError):
            info = {}
        recorded = str(info.get("ros_distro") or "")
        if recorded in ("humble", "jazzy", "kilted"):
            distro = recorded  # type: ignore[assignment]
        elif isinstance(info.get("version"), int) and info["version"] <= 8:
            distro = "humble"
        if info.get("storage_identifier") in ("mcap", "sqlite3"):
            storage = info["storage_identifier"]
    return distro, storage


def _latched(conn: Connection) -> bool:
    ext = conn.ext
    if isinstance(ext, ConnectionExtRosbag2) and ext.offered_qos_profiles:
        return any(q.durability == QosDurability.TRANSIENT_LOCAL for q in ext.offered_qos_profiles)
    return conn.topic == "/tf_static"


def _register_missing_types(writer: BagWriter, reader: AnyReader) -> None:
    """Teach the writer's typestore the input's custom message types, so their raw bytes can be copied."""
    known = writer.typestore.fielddefs
    missing = {k: v for k, v in reader.typestore.fielddefs.items() if k not in known}
    if missing:
        writer.typestore.register(missing)


def _predict_labels(
    cloud: PointCloud, predict: Predictor, class_map: ClassMap
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32] | None]:
    result = predict(cloud)
    scores = None
    if hasattr(result, "labels") and hasattr(result, "scores"):
        result, scores = result.labels, np.asarray(result.scores, np.float32)
        if scores.shape != (len(cloud),):
            raise ValueError(f"predict() returned scores of shape {scores.shape} for {len(cloud)} points")
    raw = np.asarray(result)
    if raw.shape != (len(cloud),) or raw.dtype.kind not in "iu":
        raise ValueError(
            f"predict() must return ({len(cloud)},) integer training ids for the sweep at "
            f"t={cloud.stamp_ns}, got shape {raw.shape} dtype {raw.dtype}"
        )
    labels = raw.astype(np.int64, copy=False)
    bad = (labels != class_map.ignore_index) & ((labels < 0) | (labels >= class_map.num_classes))
    if bad.any():
        raise ValueError(
            f"predict() returned id {int(labels[bad][0])} for the sweep at t={cloud.stamp_ns}; "
            f"expected 0..{class_map.num_classes - 1} or ignore_index {class_map.ignore_index}"
        )
    return labels, scores


def _segmentation_message(
    typestore: Any, msg: Any, full: PointCloud, predict: Predictor, class_map: ClassMap
) -> tuple[Any, int, int]:
    """(PointCloud2, labelled points, non-finite points) for one decoded sweep (all points kept)."""
    n = len(full)
    fin = np.isfinite(full.xyz)
    finite = fin[:, 0] & fin[:, 1] & fin[:, 2]
    n_bad = n - int(np.count_nonzero(finite))
    if n_bad:
        sub = PointCloud(
            xyz=full.xyz[finite],
            intensity=full.intensity[finite],
            stamp_ns=full.stamp_ns,
            frame_id=full.frame_id,
            ring=None if full.ring is None else full.ring[finite],
            label=None if full.label is None else full.label[finite],
        )
        labels = np.full(n, class_map.ignore_index, np.int64)
        sub_labels, sub_scores = _predict_labels(sub, predict, class_map)
        labels[finite] = sub_labels
        scores = None
        if sub_scores is not None:
            scores = np.zeros(n, np.float32)
            scores[finite] = sub_scores
    else:
        labels, scores = _predict_labels(full, predict, class_map)
    height, width = int(msg.height), int(msg.width)
    cloud = build_segmented_cloud(
        full.xyz,
        full.intensity,
        labels,
        class_map.colors,
        ignore_index=class_map.ignore_index,
        ignore_color=class_map.ignore_color,
        scores=scores,
        shape=(height, width) if height > 1 else None,
    )
    header = make_header(typestore, full.stamp_ns, str(msg.header.frame_id))
    out = cloud.to_message(
        typestore.types[_POINTCLOUD2], typestore.types["sensor_msgs/msg/PointField"], header
    )
    return out, int(np.count_nonzero(labels != class_map.ignore_index)), n_bad


def _raw_messages(reader: AnyReader, src: Path) -> Iterator[tuple[Connection, int, bytes]]:
    """The input's raw messages in log-time order; a storage failure becomes BagReadError."""
    it = reader.messages()
    while True:
        try:
            conn, log_time, raw = next(it)
        except StopIteration:
            return
        except Exception as err:  # a damaged storage file: nothing is written (the writer aborts)
            raise BagReadError(
                f"{src} cannot be read to the end ({type(err).__name__}: {err}); nothing was written "
                "(a damaged bag cannot be segmented: `lidar-ssl info` says what is recoverable)"
            ) from err
        yield conn, log_time, raw


def _skip(report: SegmentBagReport, reason: str, topic: str, log_time: int, err: Exception) -> None:
    level = logging.DEBUG if reason in report.skipped else logging.WARNING
    report.skipped[reason] += 1
    log.log(level, "no segmentation for %s at t=%d: %s", topic, log_time, err)


def write_segmented_bag(
    in_bag: Path | str,
    out_bag: Path | str,
    predict: Predictor,
    class_map: ClassMap,
    *,
    topic_in: str | None = None,
    topic_out: str = "/lidar/segmentation",
    overwrite: bool = False,
    distro: Distro | None = None,
    storage: Storage | None = None,
    compress: bool = True,
    profile: ProfileConfig | None = None,
) -> SegmentBagReport:
    """Copy ``in_bag`` to ``out_bag`` and add ``topic_out`` with ``predict``'s labels for every sweep.

    ``topic_in`` defaults to the profile's LiDAR topic; ``distro`` and ``storage`` default to the input's.
    ``predict`` receives each sweep's finite points (with the raw ``label`` field when the bag has one)
    and returns ``(N,)`` training ids of ``class_map`` (or its ignore_index).
    """
    prof = profile or ProfileConfig()
    src, dst = Path(in_bag), Path(out_bag)
    lidar_topic = topic_in or prof.lidar_topic
    if src.resolve() == dst.resolve():
        raise ConfigError(f"the output bag {dst} is the input bag; write to another path")
    in_distro, in_storage = _input_format(src)
    report = SegmentBagReport(out_bag=dst, topic_out=topic_out)
    try:
        reader = AnyReader([src], default_typestore=default_read_typestore())
        reader.open()
    except Exception as err:  # rosbags raises several types for a path that is no readable bag
        raise BagReadError(
            f"cannot read bag {src}: {type(err).__name__}: {err}; a damaged bag cannot be segmented "
            "(segment copies whole bags only): `lidar-ssl info` says what is recoverable"
        ) from err
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        if topics.get(lidar_topic) != _POINTCLOUD2:
            found = sorted(t for t, mt in topics.items() if mt == _POINTCLOUD2)
            raise ConfigError(
                f"{src} has no {_POINTCLOUD2} topic {lidar_topic}; PointCloud2 topics in the bag: "
                f"{found or 'none'}; choose the input topic with --lidar-topic"
            )
        if topic_out in topics:
            raise ConfigError(f"{src} already has a topic {topic_out}; choose another output --topic")
        with BagWriter(
            dst,
            distro=distro or in_distro,
            storage=storage or in_storage,
            compress=compress,
            overwrite=overwrite,
        ) as writer:
            _register_missing_types(writer, reader)
            for conn in reader.connections:
                writer.add_topic(conn.topic, conn.msgtype, latched=_latched(conn))
            writer.add_topic(topic_out, _POINTCLOUD2)
            ts = writer.typestore
            for conn, log_time, raw in _raw_messages(reader, src):
                writer.write_raw(conn.topic, log_time, raw)
                report.messages_copied += 1
                if conn.topic != lidar_topic:
                    continue
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                except Exception as err:  # rosbags raises several types for a corrupt message
                    _skip(report, f"cannot deserialize ({type(err).__name__})", lidar_topic, log_time, err)
                    continue
                try:
                    full = cloud_to_pointcloud_counted(
                        msg, label_field=prof.label_field, drop_nonfinite=False
                    ).cloud
                except MessageError as err:
                    _skip(report, f"{type(err).__name__}: {err.reason[:100]}", lidar_topic, log_time, err)
                    continue
                except Exception as err:  # a decoder defect costs this sweep, never the whole bag
                    _skip(report, f"cannot decode ({type(err).__name__})", lidar_topic, log_time, err)
                    continue
                out, n_labelled, n_bad = _segmentation_message(ts, msg, full, predict, class_map)
                writer.write(topic_out, log_time, out)
                report.sweeps_written += 1
                report.points_written += len(full)
                report.points_labelled += n_labelled
                report.points_nonfinite += n_bad
    finally:
        reader.close()
    log.info(
        "wrote %s: %d sweeps segmented on %s, %d skipped, %d messages copied",
        dst,
        report.sweeps_written,
        topic_out,
        report.n_skipped,
        report.messages_copied,
    )
    return report


__all__ = ["SegmentBagReport", "label_passthrough", "pack_rgb", "unpack_rgb", "write_segmented_bag"]
