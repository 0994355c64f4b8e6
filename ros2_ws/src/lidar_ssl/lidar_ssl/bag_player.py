"""``bag_player``: publishes a bag's messages through rclpy at a chosen rate (logic: record.player).

Messages go out serialized, exactly as recorded; ``/tf_static`` first and transient-local. Topics whose
message package is not installed are reported and skipped. With ``shutdown_when_done`` the node exits
after the last message, once every reliable subscriber has acknowledged everything (up to ``ACK_TIMEOUT_S``;
a process that exits earlier takes unacknowledged samples with it), and ``LINGER_S`` more.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rclpy.duration import Duration
from rclpy.node import Node

from lidar_ssl.common import latched_qos, message_class, run_node, sensor_qos
from lidar_ssl.params import declare_from_model
from lidar_ssl_core.record.config import PlayerConfig
from lidar_ssl_core.record.player import BagPlayer, PlayStats, is_latched_topic

LINGER_S = 1.0
ACK_TIMEOUT_S = 30.0  # a loaded subscriber may take a while to take what was sent


class BagPlayerNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("bag_player", **kwargs)
        cfg = declare_from_model(self, PlayerConfig)
        if not cfg.bags:
            raise ValueError("bag_player: parameter 'bags' is empty; give at least one bag")
        self.config = cfg
        self.player = BagPlayer(cfg.bags, rate=cfg.rate, topics=cfg.topics, loop=cfg.loop)
        self._pubs: dict[str, Any] = {}
        for topic, msgtype in self.player.topics.items():
            cls = message_class(msgtype)
            if cls is None:
                self.get_logger().warning(f"{topic}: message package of {msgtype} not installed; not played")
                continue
            latched = is_latched_topic(topic)
            qos = latched_qos() if latched else sensor_qos(cfg.reliable, cfg.qos_depth)
            self._pubs[topic] = self.create_publisher(cls, topic, qos)
        self._stop = threading.Event()
        self._finished = threading.Event()
        self.stats: PlayStats | None = None
        self._thread = threading.Thread(target=self._run, name="bag-player", daemon=True)
        self._thread.start()

    def _publish(self, topic: str, msgtype: str, raw: bytes) -> bool:
        pub = self._pubs.get(topic)
        if pub is None:
            return False
        pub.publish(raw)
        return True

    def _wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.config.wait_for_subscribers_s
        pubs = [p for t, p in self._pubs.items() if not is_latched_topic(t)]
        while time.monotonic() < deadline and not self._stop.is_set():
            if all(p.get_subscription_count() > 0 for p in pubs):
                return
            time.sleep(0.05)
        missing = [t for t, p in self._pubs.items() if p.get_subscription_count() == 0]
        if missing:
            self.get_logger().info(f"playing without subscribers on {missing}")

    def _wait_for_acks(self) -> None:
        """Reliable delivery: stay until every matched subscriber acknowledged every sample (or a timeout)."""
        if not self.config.reliable:
            return
        deadline = time.monotonic() + ACK_TIMEOUT_S
        for topic, pub in self._pubs.items():
            if self._stop.is_set():
                return
            left = max(deadline - time.monotonic(), 0.0)
            if not pub.wait_for_all_acked(Duration(seconds=left)):
                self.get_logger().warning(f"{topic}: not every subscriber acknowledged every message")

    def _run(self) -> None:
        try:
            self._wait_for_subscribers()
            if self._stop.wait(self.config.start_delay_s):
                return
            self.stats = self.player.play(self._publish, self._stop)
            total = sum(self.stats.published.values())
            self.get_logger().info(f"played {total} messages ({dict(self.stats.published)})")
            self._wait_for_acks()
            self._stop.wait(LINGER_S)
        except Exception as err:  # reported, and the node ends
            self.get_logger().error(f"playback failed: {err}")
        finally:
            self._finished.set()

    def done(self) -> bool:
        return self.config.shutdown_when_done and self._finished.is_set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


def main(args: list[str] | None = None) -> int:
    return run_node(BagPlayerNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
