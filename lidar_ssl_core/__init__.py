"""lidar_ssl_core: the ROS-free library behind lidar_ssl.

Everything that has logic lives here (bag I/O, message conversion, synchronisation, calibration,
superpixels, voxels, datasets, ...). Importing it never imports rclpy, so it installs with pip and runs
on machines without ROS; the ROS 2 package in ``ros2_ws/src/lidar_ssl`` is a thin layer over it.
"""

from __future__ import annotations

__version__ = "0.1.0"
