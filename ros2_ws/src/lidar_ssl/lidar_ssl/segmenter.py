"""``segmenter``: live LiDAR segmentation as a lifecycle node (logic: lidar_ssl_core.deploy / live.segment).

Transitions: configure loads the model package (``model`` parameter) and creates the publishers;
activate subscribes to the input (sensor-data QoS) and starts the worker; deactivate stops both;
cleanup releases the engine. A new package is loaded without restarting the process by
deactivate -> cleanup -> (set ``model``) -> configure -> activate.

The worker only ever holds the newest cloud (older pending ones are dropped and counted). Each scan gives
``~/labels`` (x y z intensity rgb label score, the input's frame and stamp), ``~/colored`` (x y z intensity
rgb label) and ``~/confidence`` (Vector3Stamped: x mean score, y fraction under ``low_score``, z points).
A malformed cloud is reported and skipped.
"""

from __future__ import annotations

import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Vector3Stamped
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import PointCloud2, PointField

from lidar_ssl.common import OK, WARN, diagnostic_status, publish_diagnostics, run_node, sensor_qos
from lidar_ssl.params import declare_from_model
from lidar_ssl_core.errors import LidarSslError
from lidar_ssl_core.live.config import SegmenterConfig
from lidar_ssl_core.live.segment import LatencyStats, LatestOnlyWorker, scan_confidence
from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud

RELIABLE_DEPTH = 50  # output history with ``reliable``: 5 s of scans at 10 Hz waiting for acknowledgement


class Segmenter(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("segmenter", **kwargs)
        declare_from_model(self, SegmenterConfig)  # validated again at each configure
        self.config: SegmenterConfig | None = None
        self.engine: Any = None
        self._worker: LatestOnlyWorker[tuple[Any, float]] | None = None
        self._sub: Any = None
        self._pubs: dict[str, Any] = {}
        self.latency = LatencyStats()
        self.engine_ms = LatencyStats()
        self.malformed = 0
        self.published = 0
        self._dropped_before = 0
        self._submitted_before = 0
        self._last_error = ""
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer: Any = None
        if self.get_parameter("autostart").value:
            self.trigger_configure()
            if self.config is not None:
                self.trigger_activate()

    def _read_config(self) -> SegmenterConfig:
        values = {name: self.get_parameter(name).value for name in SegmenterConfig.model_fields}
        return SegmenterConfig.model_validate({k: v for k, v in values.items() if v is not None})

    # --------------------------------------------------------------------------------- transitions
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from lidar_ssl_core.deploy.engine import load_engine

        try:
            cfg = self._read_config()
            if not cfg.model:
                raise LidarSslError("parameter 'model' is empty: give a model package or checkpoint")
            self.engine = load_engine(cfg.model, cfg.backend, cfg.device, cfg.threads or None)
        except Exception as err:  # any failure to load is reported; the node stays unconfigured
            self._last_error = f"configure failed: {type(err).__name__}: {err}"
            self.get_logger().error(self._last_error)
            return TransitionCallbackReturn.FAILURE
        self.config = cfg
        self.latency = LatencyStats(cfg.latency_window)
        self.engine_ms = LatencyStats(cfg.latency_window)
        # outputs are reliable; with ``reliable`` inputs a slow subscriber must not lose unacknowledged
        # outputs either, so the history covers a few seconds of scans
        clouds, scores = (RELIABLE_DEPTH, RELIABLE_DEPTH) if cfg.reliable else (5, 10)
        self._pubs = {
            "labels": self.create_lifecycle_publisher(PointCloud2, cfg.labels_topic, clouds),
            "colored": self.create_lifecycle_publisher(PointCloud2, cfg.colored_topic, clouds),
            "confidence": self.create_lifecycle_publisher(Vector3Stamped, cfg.confidence_topic, scores),
        }
        self._diag_timer = self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(
            f"model {cfg.model} loaded ({self.engine.num_classes} classes, {cfg.backend} on {cfg.device})"
        )
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.config is not None
        self._worker = LatestOnlyWorker(self._segment, name="segmenter-worker")
        qos = sensor_qos(self.config.reliable, 2)
        self._sub = self.create_subscription(PointCloud2, self.config.input_topic, self._on_cloud, qos)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        self.engine = None
        self.config = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        return TransitionCallbackReturn.SUCCESS

    def _stop_input(self) -> None:
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        if self._worker is not None:
            self._worker.stop()
            self._dropped_before += self._worker.dropped
            self._submitted_before += self._worker.submitted
            self._worker = None

    # ------------------------------------------------------------------------------------ scans
    def _on_cloud(self, msg: PointCloud2) -> None:
        if self._worker is not None:
            self._worker.submit((msg, time.perf_counter()))

    def _segment(self, item: tuple[PointCloud2, float]) -> None:
        msg, received = item
        engine, cfg = self.engine, self.config
        if engine is None or cfg is None:
            return
        try:
            # non-finite points keep their place (labelled ignore_index): the output lines up index for
            # index with the input, organized shape included, as ``lidar-ssl segment`` writes it
            cloud = cloud_to_pointcloud(msg, label_field=None, drop_nonfinite=False)
        except LidarSslError as err:
            self.malformed += 1
            self._last_error = str(err)
            self.get_logger().warning(f"malformed cloud on {cfg.input_topic} skipped: {err}")
            return
        from lidar_ssl_core.deploy.cloud import build_segmented_cloud

        start = time.perf_counter()
        try:
            seg = engine.segment(cloud)
        except LidarSslError as err:
            self.malformed += 1
            self._last_error = str(err)
            self.get_logger().warning(f"cloud on {cfg.input_topic} rejected by the engine: {err}")
            return
        self.engine_ms.add(1e3 * (time.perf_counter() - start))
        shape = (int(msg.height), int(msg.width)) if msg.height > 1 else None
        kw = {"ignore_index": engine.ignore_index, "ignore_color": engine.ignore_color, "shape": shape}
        labelled = build_segmented_cloud(
            cloud.xyz, cloud.intensity, seg.labels, engine.palette, scores=seg.scores, **kw
        )
        colored = build_segmented_cloud(cloud.xyz, cloud.intensity, seg.labels, engine.palette, **kw)
        conf = scan_confidence(seg.labels, seg.scores, engine.ignore_index, cfg.low_score)
        self._pubs["labels"].publish(
            labelled.to_message(PointCloud2, PointField, msg.header, data_as="array")
        )
        self._pubs["colored"].publish(
            colored.to_message(PointCloud2, PointField, msg.header, data_as="array")
        )
        out = Vector3Stamped()
        out.header = msg.header
        out.vector.x, out.vector.y, out.vector.z = conf.mean_score, conf.low_fraction, float(conf.points)
        self._pubs["confidence"].publish(out)
        self.published += 1
        self.latency.add(1e3 * (time.perf_counter() - received))

    # ------------------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        worker = self._worker
        dropped = self._dropped_before + (worker.dropped if worker is not None else 0)
        received = (worker.submitted if worker is not None else 0) + self._submitted_before
        p50, p99 = self.latency.percentiles(50, 99)
        e50, e99 = self.engine_ms.percentiles(50, 99)
        values = {
            "latency p50 [ms]": f"{p50:.1f}",
            "latency p99 [ms]": f"{p99:.1f}",
            "engine p50 [ms]": f"{e50:.1f}",
            "engine p99 [ms]": f"{e99:.1f}",
            "scans published": self.published,
            "scans dropped (newer arrived)": dropped,
            "drop rate": f"{dropped / received:.3f}" if received else "0",
            "malformed skipped": self.malformed,
            "inference failures": worker.failed if worker is not None else 0,
            "model": self.config.model if self.config is not None else "",
        }
        level = WARN if self.malformed or dropped else OK
        status = diagnostic_status(self, "segmentation", level, self._last_error or "ok", values)
        publish_diagnostics(self, self._diagnostics, [status])


def main(args: list[str] | None = None) -> int:
    return run_node(Segmenter, args)


if __name__ == "__main__":
    raise SystemExit(main())
