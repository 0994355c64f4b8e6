"""ROS message <-> numpy conversion, duck-typed so rosbags and rclpy messages both work."""

from __future__ import annotations

from lidar_ssl_core.msg.camera_info import camera_info_to_intrinsics, make_camera_info
from lidar_ssl_core.msg.image import (
    compressed_from_bytes,
    compressed_image_size,
    compressed_to_rgb,
    image_to_array,
    image_to_rgb,
    make_compressed_image,
    make_image,
)
from lidar_ssl_core.msg.pointcloud2 import (
    CloudConversion,
    EncodedCloud,
    FieldSpec,
    cloud_to_pointcloud,
    cloud_to_pointcloud_counted,
    encode_cloud,
    make_pointcloud2,
    read_cloud,
)
from lidar_ssl_core.msg.stamps import header_stamp_ns, make_header, make_time, ns_to_sec_nanosec, stamp_to_ns
from lidar_ssl_core.msg.tf import make_tf_message, tf_message_to_transforms

__all__ = [
    "CloudConversion",
    "EncodedCloud",
    "FieldSpec",
    "camera_info_to_intrinsics",
    "cloud_to_pointcloud",
    "cloud_to_pointcloud_counted",
    "compressed_from_bytes",
    "compressed_image_size",
    "compressed_to_rgb",
    "encode_cloud",
    "header_stamp_ns",
    "image_to_array",
    "image_to_rgb",
    "make_camera_info",
    "make_compressed_image",
    "make_header",
    "make_image",
    "make_pointcloud2",
    "make_tf_message",
    "make_time",
    "ns_to_sec_nanosec",
    "read_cloud",
    "stamp_to_ns",
    "tf_message_to_transforms",
]
