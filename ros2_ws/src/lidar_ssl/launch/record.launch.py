"""The fleet recorder (curated, crash-safe shards) with its parameters from config/recorder.yaml.

ros2 launch lidar_ssl record.launch.py output_dir:=/data/recordings
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("lidar_ssl"), "config", "recorder.yaml"])
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="recorder YAML"),
        DeclareLaunchArgument("output_dir", default_value="recordings", description="shard folder"),
        DeclareLaunchArgument(
            "calibration_file", default_value="", description="static transforms YAML ('' = /tf_static only)"
        ),
    ]
    node = Node(
        package="lidar_ssl",
        executable="fleet_recorder",
        name="fleet_recorder",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "output_dir": LaunchConfiguration("output_dir"),
                "calibration_file": LaunchConfiguration("calibration_file"),
            },
        ],
    )
    return LaunchDescription([*args, node])
