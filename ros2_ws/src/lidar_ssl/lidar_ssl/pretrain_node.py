"""``pretrain``: onboard pretraining over bags or the recorder's shard folder (logic: live.pretrain).

Training runs in a worker thread at low priority (niceness, bounded torch threads); the executor keeps
publishing ``~/status`` (std_msgs/String, JSON) and ``/diagnostics``. Checkpoints every
``steps_per_round`` steps; a restarted node resumes from ``<output>/ckpt_last.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from std_msgs.msg import String

from lidar_ssl.common import ERROR, OK, WARN, diagnostic_status, latched_qos, publish_diagnostics, run_node
from lidar_ssl.params import declare_from_model
from lidar_ssl_core.live.config import PretrainNodeConfig
from lidar_ssl_core.live.pretrain import ContinualPretraining, PretrainProgress, lower_priority


class PretrainNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("pretrain", **kwargs)
        cfg = declare_from_model(self, PretrainNodeConfig)
        self.config = cfg
        lower_priority(cfg.nice, cfg.threads)
        self.job = ContinualPretraining(cfg)
        self._status = self.create_publisher(String, "~/status", latched_qos(1))
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(cfg.status_period_s, self._publish)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._train, name="pretrain", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"pretraining {self.job.config.pretrain.method} into {self.job.config.pretrain.run_dir} "
            f"(nice +{cfg.nice}, {cfg.threads} threads)"
        )

    def _train(self) -> None:
        try:
            self.job.run(self._stop)
        except Exception as err:  # reported on ~/status and /diagnostics; the node then exits
            self.get_logger().error(f"pretraining failed: {err}")
        finally:
            self._finished.set()
            self._publish()

    def _publish(self) -> None:
        p: PretrainProgress = self.job.progress
        fields = {k: v for k, v in dataclasses.asdict(p).items() if k not in ("extra", "frames_by_bag")}
        fields["loss"] = None if math.isnan(p.loss) else p.loss
        fields["bags_trained"] = len(p.frames_by_bag)  # bags with at least one frame trained on
        self._status.publish(String(data=json.dumps(fields)))
        level = ERROR if p.state == "error" else WARN if p.state == "waiting" else OK
        values = {k: v for k, v in fields.items() if k != "message"}
        publish_diagnostics(
            self,
            self._diagnostics,
            [diagnostic_status(self, "pretraining", level, p.message or p.state, values)],
        )

    def done(self) -> bool:
        return self._finished.is_set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(120.0)  # the current step, then a checkpoint


def main(args: list[str] | None = None) -> int:
    return run_node(PretrainNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
