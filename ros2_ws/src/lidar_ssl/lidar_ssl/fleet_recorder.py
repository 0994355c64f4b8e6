"""``fleet_recorder``: curated, crash-safe recording on the vehicle (logic: lidar_ssl_core.record).

Subscribes (raw: messages stay CDR bytes, images are never decoded) to the LiDAR, the cameras and their
CameraInfo with sensor-data QoS, to ``/tf`` and to ``/tf_static`` (transient-local), and to the live
segmenter's per-scan confidence; writes rotating mcap shards. Services and topics:

- ``~/snapshot`` (std_srvs/Trigger, where std_srvs is installed) and ``~/snapshot_request``
  (std_msgs/String, a label): save the last ``ring_seconds`` of everything; the bag's path is the
  service's message and is published on ``~/snapshot_done`` once written;
- ``/diagnostics``: input rate per topic, each camera's clock offset to the LiDAR, sync drops by reason,
  writer queue depth, disk use and state.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Vector3Stamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String

from lidar_ssl.common import (
    ERROR,
    OK,
    WARN,
    TFMessage,
    Trigger,
    diagnostic_status,
    latched_qos,
    publish_diagnostics,
    run_node,
    sensor_qos,
)
from lidar_ssl.params import declare_from_model
from lidar_ssl_core.errors import LidarSslError
from lidar_ssl_core.record.calibration_file import load_static_transforms
from lidar_ssl_core.record.config import RecorderConfig
from lidar_ssl_core.record.recorder import Recorder


class FleetRecorder(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("fleet_recorder", **kwargs)
        cfg = declare_from_model(self, RecorderConfig)
        self.config = cfg
        statics = load_static_transforms(cfg.calibration_file) if cfg.calibration_file else []
        self.recorder = Recorder(cfg, static_transforms=statics)
        recovered = self.recorder.start()
        for path in recovered:
            self.get_logger().warning(f"recovered shard left open by a previous run: {path}")
        qos = sensor_qos(cfg.reliable, cfg.qos_depth)
        rec = self.recorder
        self.create_subscription(PointCloud2, cfg.lidar_topic, rec.on_lidar, qos, raw=True)
        image_cls = CompressedImage if cfg.image_type == "compressed" else Image
        for cam in cfg.cameras:
            on_image = functools.partial(rec.on_image, cam)
            on_info = functools.partial(rec.on_camera_info, cam)
            self.create_subscription(image_cls, cfg.image_topic(cam), on_image, qos, raw=True)
            self.create_subscription(CameraInfo, cfg.info_topic(cam), on_info, qos, raw=True)
        if TFMessage is not None:
            tf_qos, static_qos = sensor_qos(True, 100), latched_qos()
            self.create_subscription(TFMessage, cfg.tf_topic, rec.on_tf, tf_qos, raw=True)
            self.create_subscription(TFMessage, cfg.tf_static_topic, rec.on_tf_static, static_qos, raw=True)
        else:
            self.get_logger().warning(
                "tf2_msgs is not installed: /tf and /tf_static are not recorded; extrinsics come only "
                f"from calibration_file ({cfg.calibration_file or 'none given'})"
            )
        if cfg.confidence_topic:
            self.create_subscription(Vector3Stamped, cfg.confidence_topic, rec.on_confidence, 10)
        self._snapshot_done = self.create_publisher(String, "~/snapshot_done", 10)
        self.create_subscription(String, "~/snapshot_request", self._on_snapshot_request, 10)
        if Trigger is not None:
            self.create_service(Trigger, "~/snapshot", self._on_snapshot_service)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(0.05, rec.poll)
        self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(
            f"recording {cfg.lidar_topic} + {len(cfg.cameras)} cameras into {Path(cfg.output_dir).resolve()}"
        )

    # ---------------------------------------------------------------------------------- snapshots
    def _snapshot(self, label: str) -> tuple[bool, str]:
        future = self.recorder.request_snapshot(label)
        if future.done() and future.exception() is not None:
            return False, str(future.exception())
        future.add_done_callback(self._snapshot_finished)
        return True, "snapshot started"

    def _snapshot_finished(self, future: Future[Path]) -> None:
        err = future.exception()
        text = f"error: {err}" if err is not None else str(future.result())
        self._snapshot_done.publish(String(data=text))
        (self.get_logger().error if err else self.get_logger().info)(f"snapshot: {text}")

    def _on_snapshot_request(self, msg: String) -> None:
        ok, text = self._snapshot(msg.data)
        if not ok:
            self._snapshot_done.publish(String(data=f"error: {text}"))

    def _on_snapshot_service(self, request: Any, response: Any) -> Any:
        response.success, response.message = self._snapshot("")
        return response

    # -------------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        st = self.recorder.status()
        sync = st.sync
        inputs = {f"{t} [Hz]": f"{hz:.2f}" for t, hz in st.input_hz.items()}
        inputs.update({f"{t} received": str(n) for t, n in st.input_total.items()})
        inputs.update({f"{t} malformed": str(n) for t, n in st.malformed.items()})
        silent = [t for t in (self.config.lidar_topic,) if st.input_hz.get(t, 0.0) == 0.0]
        offsets = {f"{c} offset to lidar [ms]": f"{v:.2f}" for c, v in st.camera_offset_ms.items()}
        drops = {
            "groups emitted": sync.groups_emitted,
            "sweeps without any camera": sync.lidar_without_cameras,
            "incomplete (require_all_cameras)": sync.incomplete_group,
            "stale sweeps": sync.stale_lidar,
            "duplicate sweeps": sync.duplicate_lidar,
            "images unused": sync.camera_unused,
            "stale images": sync.stale_camera,
            "duplicate images": sync.duplicate_camera,
            "image queue overflow": sync.queue_overflow,
            "forced (window not closed)": sync.forced,
            **{f"kept: {k}": v for k, v in st.keep_kept.items()},
            **{f"skipped: {k}": v for k, v in st.keep_skipped.items()},
        }
        sh = st.shards
        writer = {
            "queue depth": st.queue_depth,
            "queue capacity": st.queue_capacity,
            "samples dropped (queue full)": st.dropped_queue_full,
            "samples written": st.samples_written,
            "held for confidence": st.held_for_confidence,
            "state": sh.state,
            "open shard": sh.open_shard,
            "shards closed": sh.shards_closed,
            "shards recovered": sh.shards_recovered,
            "shards evicted (quota)": sh.shards_evicted,
            "closed shards [MiB]": f"{sh.folder_bytes / 2**20:.1f}",
            "free [MiB]": f"{sh.free_bytes / 2**20:.0f}",
            "dropped (disk full)": sh.dropped_disk_full,
            "already in the shard (not rewritten)": sh.duplicates_skipped,
            "snapshots": st.snapshots,
            "ring buffer [MiB]": f"{st.ring_bytes / 2**20:.1f}",
        }
        disk_level = OK if sh.state == "ok" else ERROR
        queue_level = WARN if st.dropped_queue_full or st.queue_depth >= st.queue_capacity else OK
        statuses = [
            diagnostic_status(
                self, "inputs", WARN if silent else OK, f"no data on {silent}" if silent else "ok", inputs
            ),
            diagnostic_status(self, "camera clock offsets", OK, "t_camera - t_lidar, recent mean", offsets),
            diagnostic_status(self, "synchronization", OK, "drops by reason", drops),
            diagnostic_status(self, "writer", max(disk_level, queue_level), sh.reason or sh.state, writer),
        ]
        publish_diagnostics(self, self._diagnostics, statuses)

    def close(self) -> None:
        try:
            self.recorder.stop()
        except LidarSslError as err:
            self.get_logger().error(f"closing the recorder: {err}")


def main(args: list[str] | None = None) -> int:
    return run_node(FleetRecorder, args)


if __name__ == "__main__":
    raise SystemExit(main())
