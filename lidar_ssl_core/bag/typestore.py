"""Which rosbags typestore to use, for reading and for writing.

Reading: the default typestore only matters for bags that carry no message definitions. MCAP files
always embed them (ros2msg/ros2idl schemas) and rosbag2 sqlite3 stores them since Iron; the bags without
any are the sqlite3 bags recorded by Humble (and older). So the reading default is ``ROS2_HUMBLE``: it
is the distro those bags come from, and for everything newer the embedded definitions win anyway. The
types this project uses (sensor_msgs, tf2_msgs, geometry_msgs, std_msgs) are identical in Humble, Jazzy
and Kilted.

Writing: the typestore of the target distro, so embedded definitions and RIHS01 hashes match what that
distro's ``ros2 bag`` expects.
"""

from __future__ import annotations

from typing import Literal

from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from lidar_ssl_core.errors import ConfigError

Distro = Literal["humble", "jazzy", "kilted"]

_STORES: dict[str, Stores] = {
    "humble": Stores.ROS2_HUMBLE,
    "jazzy": Stores.ROS2_JAZZY,
    "kilted": Stores.ROS2_KILTED,
}

#: rosbag2 metadata version written per distro: 8 is the newest layout Humble's reader decodes
#: (QoS as an embedded YAML string with integer enums); Jazzy and Kilted write and read 9.
METADATA_VERSION: dict[str, Literal[8, 9]] = {"humble": 8, "jazzy": 9, "kilted": 9}


def typestore_for(distro: str) -> Typestore:
    """A fresh rosbags typestore of a distro (cheap; fresh so a caller's ``register`` stays local)."""
    try:
        return get_typestore(_STORES[distro])
    except KeyError:
        raise ConfigError(f"unknown ROS 2 distro '{distro}'; use one of {sorted(_STORES)}") from None


def default_read_typestore() -> Typestore:
    """Typestore used for bags without embedded message definitions (see module docstring)."""
    return typestore_for("humble")


def normalize_msgtype(msgtype: str) -> str:
    """'sensor_msgs/PointCloud2' or 'sensor_msgs/msg/PointCloud2' -> 'sensor_msgs/msg/PointCloud2'."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2:
        return f"{parts[0]}/msg/{parts[1]}"
    return msgtype.strip()
