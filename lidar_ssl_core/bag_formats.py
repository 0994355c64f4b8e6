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
