"""The bag flavours a writer can produce, as plain ``Literal`` types.

Kept in a module that imports nothing heavy, so the CLI can offer them as option choices without
importing rosbags, numpy or torch (``lidar-ssl --help`` stays fast).
"""

from __future__ import annotations

from typing import Literal

#: ROS 2 distribution whose ``metadata.yaml`` version the bag is written for (humble: v8, else v9)
Distro = Literal["humble", "jazzy", "kilted"]
#: rosbag2 storage plugin
Storage = Literal["mcap", "sqlite3"]

#: key in a bag's ``metadata.yaml`` ``custom_data`` naming the class map of its per-point ``label`` ids
#: (``nuscenes`` or ``semantickitti``; written by the converters, see docs/bag-profile.md)
CLASS_MAP_KEY = "lidar_ssl.class_map"
