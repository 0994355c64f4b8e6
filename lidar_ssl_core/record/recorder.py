"""The fleet recorder, ROS-free: callbacks in, curated shards out.

The ROS node only subscribes (raw: the bytes as they came off DDS) and calls ``on_*``; everything else is
here. Data flow::

    on_lidar / on_image ──> LidarCameraSynchronizer ──> (wait for the scan's confidence) ──> KeepPolicy
         │                                                                                      │ kept
         └──> RingBuffer (last N s, for snapshots)                bounded queue <───────────────┘
                                                                      │  writer thread
                                                                      v
                                                                 ShardWriter (rotating mcap shards)

Callbacks never block on disk: a kept sample that does not fit in the queue is dropped and counted. Images
are never decoded: their stamps come from the CDR header (:mod:`.cdr`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.bag.typestore import typestore_for
from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.errors import LidarSslError, MessageError
from lidar_ssl_core.msg.stamps import header_stamp_ns
from lidar_ssl_core.msg.tf import make_tf_message, tf_message_to_transforms
from lidar_ssl_core.record.cdr import read_header
from lidar_ssl_core.record.config import RecorderConfig
from lidar_ssl_core.record.keep import KeepPolicy
from lidar_ssl_core.record.ring import RingBuffer
from lidar_ssl_core.record.shards import (
    OutMessage,
    ShardStats,
    ShardWriter,
    _free_bytes,
    unique_messages,
)
from lidar_ssl_core.sync import LidarCameraSynchronizer, SyncedGroup, SyncStats
from lidar_ssl_core.types import StampedTransform

log = logging.getLogger(__name__)

TF_MSGTYPE = "tf2_msgs/msg/TFMessage"
CLOUD_MSGTYPE = "sensor_msgs/msg/PointCloud2"
INFO_MSGTYPE = "sensor_msgs/msg/CameraInfo"
TF_HISTORY_NS = 2_000_000_000  # /tf kept to start each shard with the poses around its first sample
SIDE_QUEUE = 10_000  # ancillary messages waiting for the writer (oldest dropped beyond)
CONFIDENCE_LIVE_NS = 5_000_000_000  # the confidence topic counts as live this long after its last message


class RateMeter:
    """Messages per second over the last ``window_s`` of wall time."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window = window_s
        self._times: deque[float] = deque()
        self.total = 0

    def tick(self, now: float) -> None:
        self._times.append(now)
        self.total += 1
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self._times) / self.window


@dataclass
class RecorderStatus:
    """Everything the diagnostics report (one consistent snapshot)."""

    input_hz: dict[str, float]
    input_total: dict[str, int]
    camera_offset_ms: dict[str, float]  # mean (t_camera - t_lidar) of recent matches
    sync: SyncStats
    keep_kept: dict[str, int]
    keep_skipped: dict[str, int]
    queue_depth: int
    queue_capacity: int
    dropped_queue_full: int
    held_for_confidence: int
    malformed: dict[str, int]
    shards: ShardStats
    snapshots: int
    ring_seconds: float
    ring_bytes: int
    samples_written: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class Recorder:
    """Feeds synchronized, curated samples to rotating shards; see the module docstring.

    ``static_transforms`` (e.g. from a calibration file) are written as ``/tf_static`` into every shard, in
    addition to what arrives on ``/tf_static``.
    """

    def __init__(
        self,
        config: RecorderConfig,
        *,
        static_transforms: Iterable[StampedTransform] = (),
        free_bytes: Callable[[Path], int] = _free_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self.typestore = typestore_for(config.distro)
        self.cameras = tuple(config.cameras)
        self.image_topics = {c: config.image_topic(c) for c in self.cameras}
        self.info_topics = {c: config.info_topic(c) for c in self.cameras}
        self.output_dir = Path(config.output_dir)
        snapshots = config.snapshot_dir or str(self.output_dir / "snapshots")
        self.snapshot_dir = Path(snapshots)
        self.shards = ShardWriter(
            self.output_dir,
            prefix=config.shard_prefix,
            max_bytes=config.shard_max_mb << 20,
            max_duration_s=config.shard_max_duration_s,
            quota_bytes=config.quota_mb << 20,
            min_free_bytes=config.min_free_mb << 20,
            distro=config.distro,
            compression_level=config.compression_level,
            chunk_size=config.chunk_kb << 10,
            preamble=self._preamble,
            free_bytes=free_bytes,
            clock=clock,
        )
        self.sync: LidarCameraSynchronizer[OutMessage, OutMessage] = LidarCameraSynchronizer(
            self.cameras,
            round(config.sync_slop_s * 1e9),
            config.sync_queue_size,
            config.require_all_cameras,
        )
        self.keep = KeepPolicy(
            keyframe_hz=config.keyframe_hz,
            min_travel_m=config.min_travel_m,
            confidence_threshold=config.confidence_threshold,
            low_confidence_fraction=config.low_confidence_fraction,
            confidence_window=config.confidence_window,
        )
        self.ring = RingBuffer(config.ring_seconds, config.ring_max_mb << 20)
        self._lock = threading.Lock()  # decisions, held samples, latest calibration messages
        self._queue: queue.Queue[list[OutMessage] | None] = queue.Queue(maxsize=config.queue_size)
        # small ancillary messages (/tf, /tf_static, changed CameraInfo) for the open shard; bounded
        self._side: deque[OutMessage] = deque(maxlen=SIDE_QUEUE)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rates: dict[str, RateMeter] = {}
        self._offsets: dict[str, deque[int]] = {c: deque(maxlen=50) for c in self.cameras}
        self._malformed: dict[str, int] = {}
        self._dropped_queue_full = 0
        self._samples_written = 0
        self._held: deque[tuple[float, SyncedGroup[OutMessage, OutMessage]]] = deque()
        self._confidence: dict[int, float] = {}
        self._confidence_order: deque[int] = deque()
        self._confidence_seen: float | None = None
        self._static: dict[bytes, OutMessage] = {}  # distinct /tf_static messages, by content
        self._infos: dict[str, OutMessage] = {}  # latest CameraInfo per camera
        self._info_bodies: dict[str, bytes] = {}
        self._tf_history: deque[OutMessage] = deque()
        self._position: npt.NDArray[np.float64] | None = None
        self._snapshots = 0
        self._snapshot_busy = threading.Lock()
        transforms = list(static_transforms)
        if transforms:
            raw = self.typestore.serialize_cdr(make_tf_message(self.typestore, transforms), TF_MSGTYPE)
            data = bytes(raw)
            msg = OutMessage(config.tf_static_topic, TF_MSGTYPE, 0, data, latched=True, ident=data)
            self._static[data] = msg

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> list[Path]:
        """Recover shards left open by a previous (killed) run, then start the writer thread."""
        recovered = self.shards.recover()
        self.shards.enforce_quota()
        self._thread = threading.Thread(target=self._writer_loop, name="recorder-writer", daemon=True)
        self._thread.start()
        return recovered

    def stop(self, timeout_s: float = 30.0) -> None:
        """End of recording: finalise pending sweeps, release held samples, write everything, close."""
        self._stopping = True  # from now on a full queue is waited for, not dropped
        for group in self.sync.flush():
            self._on_group(group)
        with self._lock:
            held = [g for _, g in self._held]
            self._held.clear()
        for group in held:
            self._decide(group)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None
        else:
            self.shards.close()

    # -------------------------------------------------------------------------------------- inputs
    def _tick(self, topic: str) -> None:
        meter = self._rates.get(topic)
        if meter is None:
            meter = self._rates.setdefault(topic, RateMeter())
        meter.tick(self._clock())

    def _bad(self, topic: str, err: Exception) -> None:
        n = self._malformed.get(topic, 0)
        self._malformed[topic] = n + 1
        (log.warning if n == 0 else log.debug)("skipping a message on %s: %s", topic, err)

    def _message(self, topic: str, msgtype: str, raw: bytes | memoryview) -> OutMessage | None:
        self._tick(topic)
        try:
            stamp = read_header(raw, what=topic).stamp_ns
        except MessageError as err:
            self._bad(topic, err)
            return None
        msg = OutMessage(topic, msgtype, stamp, raw)
        self.ring.add(msg)
        return msg

    def on_lidar(self, raw: bytes | memoryview) -> None:
        msg = self._message(self.config.lidar_topic, CLOUD_MSGTYPE, raw)
        if msg is not None:
            for group in self.sync.add_lidar(msg.stamp_ns, msg):
                self._on_group(group)

    def on_image(self, camera: str, raw: bytes | memoryview) -> None:
        msg = self._message(self.image_topics[camera], self.config.image_msgtype, raw)
        if msg is not None:
            for group in self.sync.add_camera(camera, msg.stamp_ns, msg):
                self._on_group(group)

    def on_camera_info(self, camera: str, raw: bytes | memoryview) -> None:
        topic = self.info_topics[camera]
        msg = self._message(topic, INFO_MSGTYPE, raw)
        if msg is None:
            return
        body = bytes(memoryview(raw)[read_header(raw).end :])
        with self._lock:
            self._infos[camera] = msg
            changed = self._info_bodies.get(camera) != body
            self._info_bodies[camera] = body
        if changed:  # a new calibration goes to the current shard; repeats only open each shard
            self._side.append(msg)

    def on_tf(self, raw: bytes | memoryview) -> None:
        topic = self.config.tf_topic
        self._tick(topic)
        data = bytes(raw)
        try:
            transforms = tf_message_to_transforms(self.typestore.deserialize_cdr(data, TF_MSGTYPE))
        except (LidarSslError, Exception) as err:  # rosbags raises several types on garbage
            self._bad(topic, err)
            return
        if not transforms:
            return
        stamp = transforms[0].stamp_ns
        for tr in transforms:
            if tr.parent == self.config.world_frame and tr.child == self.config.base_frame:
                self._position = np.asarray(tr.matrix[:3, 3], dtype=np.float64)
        msg = OutMessage(topic, TF_MSGTYPE, stamp, data, ident=data)  # broadcasters may share a stamp
        self.ring.add(msg)
        with self._lock:
            self._tf_history.append(msg)
            while self._tf_history and self._tf_history[0].stamp_ns < stamp - TF_HISTORY_NS:
                self._tf_history.popleft()
        self._side.append(msg)

    def on_tf_static(self, raw: bytes | memoryview) -> None:
        topic = self.config.tf_static_topic
        self._tick(topic)
        key = bytes(raw)
        try:
            transforms = tf_message_to_transforms(self.typestore.deserialize_cdr(key, TF_MSGTYPE))
        except (LidarSslError, Exception) as err:
            self._bad(topic, err)
            return
        stamp = transforms[0].stamp_ns if transforms else 0
        msg = OutMessage(topic, TF_MSGTYPE, stamp, key, latched=True, ident=key)
        with self._lock:
            if key in self._static:
                return
            self._static[key] = msg
        self._side.append(msg)

    def on_confidence(self, msg: Any) -> None:
        """geometry_msgs/Vector3Stamped of the segmenter: ``vector.x`` is the scan's confidence."""
        topic = self.config.confidence_topic
        self._tick(topic)
        try:
            stamp = header_stamp_ns(msg)
            value = float(msg.vector.x)
        except (LidarSslError, AttributeError, TypeError, ValueError) as err:
            self._bad(topic, err)
            return
        with self._lock:
            self._confidence_seen = self._clock()
            self._confidence[stamp] = value
            self._confidence_order.append(stamp)
            while len(self._confidence_order) > 1000:
                self._confidence.pop(self._confidence_order.popleft(), None)
        self.poll()

    # ------------------------------------------------------------------------------------ decisions
    def _confidence_live(self) -> bool:
        seen = self._confidence_seen
        return seen is not None and (self._clock() - seen) * 1e9 < CONFIDENCE_LIVE_NS

    def _on_group(self, group: SyncedGroup[OutMessage, OutMessage]) -> None:
        for cam, match in group.cameras.items():
            self._offsets[cam].append(match.offset_ns)
        with self._lock:
            wait = (
                self.config.confidence_topic
                and self.config.confidence_wait_s > 0
                and self._confidence_live()
                and group.lidar_stamp_ns not in self._confidence
            )
            if wait or self._held:  # keep decisions in stamp order
                self._held.append((self._clock() + self.config.confidence_wait_s, group))
                ready = False
            else:
                ready = True
        if ready:
            self._decide(group)
        else:
            self.poll()

    def poll(self) -> None:
        """Decide the held samples whose confidence arrived or whose wait is over (call periodically)."""
        now = self._clock()
        while True:
            with self._lock:
                if not self._held:
                    return
                deadline, group = self._held[0]
                if group.lidar_stamp_ns not in self._confidence and now < deadline:
                    return
                self._held.popleft()
            self._decide(group)

    def _decide(self, group: SyncedGroup[OutMessage, OutMessage]) -> None:
        with self._lock:
            confidence = self._confidence.get(group.lidar_stamp_ns)
            reason = self.keep.decide(group.lidar_stamp_ns, position=self._position, confidence=confidence)
        if reason is None:
            return
        msgs = [group.lidar, *(m.item for m in group.cameras.values())]
        if self._enqueue(msgs):
            self._samples_written += 1

    def _enqueue(self, msgs: list[OutMessage]) -> bool:
        try:
            if self._stopping and self._thread is not None:
                self._queue.put(msgs, timeout=10.0)
            else:
                self._queue.put_nowait(msgs)
        except queue.Full:
            self._dropped_queue_full += 1
            log.debug("writer queue full: %d messages dropped", len(msgs))
            return False
        return True

    # -------------------------------------------------------------------------------------- writing
    def _preamble(self, stamp_ns: int) -> list[OutMessage]:
        """Messages every shard starts with: extrinsics, intrinsics and the poses just before it.

        The copies keep their originals' identity, so the shard does not store them a second time when
        the originals come through the side queue after the preamble was taken.
        """
        with self._lock:
            static = [m.at(stamp_ns, latched=True) for m in self._static.values()]
            infos = [m.at(stamp_ns) for m in self._infos.values()]
            tf = list(self._tf_history)
        return static + infos + tf

    def _writer_loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                item = []
            try:
                while self._side:
                    self.shards.write(self._side.popleft(), opens=False)
                if item:
                    self.shards.write_sample(item)
            except Exception:  # the writer thread must outlive any one bad write
                log.exception("unexpected error writing %d messages", len(item or ()))
            if item is None:
                break
        self.shards.close()

    # ------------------------------------------------------------------------------------- snapshot
    def request_snapshot(self, label: str = "") -> Future[Path]:
        """Save the ring buffer (last ``ring_seconds`` of every topic) as a bag, in a thread of its own.

        The future fails with LidarSslError when a snapshot is already being written or nothing was
        received yet.
        """
        future: Future[Path] = Future()
        items = self.ring.snapshot()
        if not items:
            future.set_exception(LidarSslError("snapshot: nothing received yet"))
            return future
        if not self._snapshot_busy.acquire(blocking=False):
            future.set_exception(LidarSslError("snapshot: another snapshot is being written"))
            return future
        safe = "".join(ch for ch in label if ch.isalnum() or ch in "-_")[:40]
        name = f"snapshot_{items[-1].stamp_ns}" + (f"_{safe}" if safe else "")

        def work() -> None:
            try:
                future.set_result(self._write_snapshot(self.snapshot_dir / name, items))
            except Exception as err:
                future.set_exception(err)
            finally:
                self._snapshot_busy.release()

        threading.Thread(target=work, name="recorder-snapshot", daemon=True).start()
        return future

    def _write_snapshot(self, path: Path, items: list[OutMessage]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the ring holds the same /tf and CameraInfo messages the preamble carries: each one once
        msgs = unique_messages(self._preamble(items[0].stamp_ns) + items)
        cfg = self.config
        with BagWriter(path, distro=cfg.distro, compression_level=cfg.compression_level) as out:
            for m in msgs:
                out.add_topic(m.topic, m.msgtype, latched=m.latched)
                out.write_raw(m.topic, m.stamp_ns, m.raw)
        self._snapshots += 1
        log.info("snapshot of %d messages written to %s", len(msgs), path)
        return path

    # -------------------------------------------------------------------------------------- status
    def status(self) -> RecorderStatus:
        now = self._clock()
        with self._lock:
            held = len(self._held)
        offsets = {c: float(np.mean(d)) / 1e6 for c, d in self._offsets.items() if d}
        return RecorderStatus(
            input_hz={t: m.rate(now) for t, m in sorted(self._rates.items())},
            input_total={t: m.total for t, m in sorted(self._rates.items())},
            camera_offset_ms=offsets,
            sync=self.sync.stats,
            keep_kept=dict(self.keep.stats.kept),
            keep_skipped=dict(self.keep.stats.skipped),
            queue_depth=self._queue.qsize(),
            queue_capacity=self.config.queue_size,
            dropped_queue_full=self._dropped_queue_full,
            held_for_confidence=held,
            malformed=dict(self._malformed),
            shards=self.shards.stats,
            snapshots=self._snapshots,
            ring_seconds=self.config.ring_seconds,
            ring_bytes=self.ring.nbytes,
            samples_written=self._samples_written,
        )
