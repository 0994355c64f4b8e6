"""Header stamp <-> integer nanoseconds.

Stamps are kept as ``int`` nanoseconds everywhere in the library (exact, sortable, no float rounding).
The helpers are duck-typed: they accept rosbags messages (``sec``/``nanosec``), rclpy messages (same
names) and ROS 1 style stamps (``secs``/``nsecs``), so callers never care where a message came from.
"""

from __future__ import annotations

from typing import Any

from lidar_ssl_core.errors import MalformedMessageError
from lidar_ssl_core.msg.ranges import INT32_MAX, INT32_MIN, UINT32_MAX, int_field, uint32_field

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or ROS 1 time) -> int nanoseconds."""
    sec = getattr(stamp, "sec", None)
    nsec = getattr(stamp, "nanosec", None)
    sec_lo, sec_hi = INT32_MIN, INT32_MAX  # builtin_interfaces/Time.sec is int32
    if sec is None:
        sec = getattr(stamp, "secs", None)
        nsec = getattr(stamp, "nsecs", None)
        sec_lo, sec_hi = 0, UINT32_MAX  # ROS 1 time.secs is uint32
    if sec is None or nsec is None:
        raise MalformedMessageError(f"stamp {stamp!r} has no sec/nanosec fields")
    sec_i = int_field(sec, "stamp sec", sec_lo, sec_hi)
    nsec_i = uint32_field(nsec, "stamp nanosec")
    if not 0 <= nsec_i < NS_PER_S:
        raise MalformedMessageError(f"stamp nanosec={nsec_i} is outside [0, 1e9)")
    return sec_i * NS_PER_S + nsec_i


def header_stamp_ns(msg: Any) -> int:
    """Stamp of ``msg.header`` in nanoseconds."""
    header = getattr(msg, "header", None)
    if header is None:
        raise MalformedMessageError(f"{type(msg).__name__} has no header")
    return stamp_to_ns(getattr(header, "stamp", None))


def ns_to_sec_nanosec(stamp_ns: int) -> tuple[int, int]:
    """Split nanoseconds into (sec, nanosec) with 0 <= nanosec < 1e9 (floor division, also for t < 0)."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return sec, nanosec


def make_time(typestore: Any, stamp_ns: int) -> Any:
    """builtin_interfaces/msg/Time of the typestore for ``stamp_ns``."""
    sec, nanosec = ns_to_sec_nanosec(stamp_ns)
    time_cls = typestore.types["builtin_interfaces/msg/Time"]
    return time_cls(sec=sec, nanosec=nanosec)


def make_header(typestore: Any, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/msg/Header of the typestore."""
    header_cls = typestore.types["std_msgs/msg/Header"]
    return header_cls(stamp=make_time(typestore, stamp_ns), frame_id=frame_id)
