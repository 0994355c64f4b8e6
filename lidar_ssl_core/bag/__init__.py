"""rosbag2 reading and writing (rosbags-based, no ROS install needed)."""

from __future__ import annotations

from lidar_ssl_core.bag.discover import expand_bags, find_bags, is_bag
from lidar_ssl_core.bag.reader import BagMessage, BagReader, RawBagMessage, ReadStats, open_bag
from lidar_ssl_core.bag.typestore import default_read_typestore, normalize_msgtype, typestore_for
from lidar_ssl_core.bag.writer import BagWriter, make_qos

__all__ = [
    "BagMessage",
    "BagReader",
    "BagWriter",
    "RawBagMessage",
    "ReadStats",
    "default_read_typestore",
    "expand_bags",
    "find_bags",
    "is_bag",
    "make_qos",
    "normalize_msgtype",
    "open_bag",
    "typestore_for",
]
