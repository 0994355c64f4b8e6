"""What the nodes share: QoS profiles, optional message packages, diagnostics, the spin/shutdown loop."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

try:  # not installable from PyPI: present on every ROS 2 machine, absent in the pip-only test setup
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover - depends on the machine
    TFMessage = None

try:
    from std_srvs.srv import Trigger
except ImportError:  # pragma: no cover - depends on the machine
    Trigger = None

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR

__all__ = [
    "ERROR",
    "OK",
    "WARN",
    "RosLogHandler",
    "TFMessage",
    "Trigger",
    "diagnostic_status",
    "latched_qos",
    "message_class",
    "publish_diagnostics",
    "run_node",
    "sensor_qos",
]


def sensor_qos(reliable: bool, depth: int) -> QoSProfile:
    """Sensor data QoS (best effort, keep last) unless ``reliable``."""
    if not reliable:
        profile = QoSProfile(depth=depth)
        profile.reliability = qos_profile_sensor_data.reliability
        profile.durability = qos_profile_sensor_data.durability
        profile.history = HistoryPolicy.KEEP_LAST
        return profile
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def latched_qos(depth: int = 100) -> QoSProfile:
    """Transient-local, reliable: what /tf_static is offered with (late joiners get every transform)."""
    return QoSProfile(
        depth=depth,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def message_class(msgtype: str) -> Any | None:
    """rclpy class of 'pkg/msg/Name', or None when that message package is not installed."""
    pkg, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError):
        return None


def diagnostic_status(
    node: Node, name: str, level: int, message: str, values: Mapping[str, object]
) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=level,
        name=f"{node.get_name()}: {name}",
        message=message,
        hardware_id=node.get_fully_qualified_name(),
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )


def publish_diagnostics(node: Node, publisher: Any, statuses: list[DiagnosticStatus]) -> None:
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(msg)


class RosLogHandler(logging.Handler):
    """Forwards the core library's ``logging`` records to the node's ROS logger."""

    def __init__(self, node: Node) -> None:
        super().__init__(logging.INFO)
        self.logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self.logger.error(text)
        elif record.levelno >= logging.WARNING:
            self.logger.warning(text)
        else:
            self.logger.info(text)


def run_node(make: Callable[[], Node], args: list[str] | None = None) -> int:
    """rclpy.init, build the node, spin until Ctrl-C / SIGTERM / the node asks to stop, clean up.

    A node may define ``done()`` (spin ends when it returns True) and ``close()`` (called before
    destruction, also on errors).
    """
    rclpy.init(args=args)
    node: Node | None = None
    code = 0
    core_log = logging.getLogger("lidar_ssl_core")
    core_log.setLevel(logging.INFO)
    fallback = logging.StreamHandler()
    fallback.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))
    handler: logging.Handler = fallback
    try:
        node = make()
        handler = RosLogHandler(node)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        core_log.addHandler(handler)
        done = getattr(node, "done", None)
        while rclpy.ok() and not (done is not None and done()):
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as err:  # start-up errors (bad parameters, unreadable bag): one line, exit code 1
        if not rclpy.ok():  # Ctrl-C / SIGTERM while the node was still starting: a stop, not an error
            logging.getLogger("lidar_ssl").info("stopped while starting (%s)", err)
        else:
            logging.getLogger("lidar_ssl").error("%s", err, exc_info=not isinstance(err, ValueError))
            print(f"error: {err}", flush=True)
            code = 1
    finally:
        core_log.removeHandler(handler)  # the ROS logger cannot publish once the context is shut down
        core_log.addHandler(fallback)
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return code
