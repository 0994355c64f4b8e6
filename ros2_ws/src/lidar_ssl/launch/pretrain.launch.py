"""Pretraining over bags (or a recorder's shard folder) as a ROS 2 node.

    ros2 launch lidar_ssl pretrain.launch.py bags:=rosbags/synthetic_sample method:=slidr \
        config:=configs/cpu_demo.yaml output:=runs/ros_pretrain
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    params = PathJoinSubstitution([FindPackageShare("lidar_ssl"), "config", "pretrain.yaml"])
    args = [
        DeclareLaunchArgument("bags", default_value="", description="comma-separated bags / folders / globs"),
        DeclareLaunchArgument("shard_dir", default_value="", description="or: a recorder's shard folder"),
        DeclareLaunchArgument("method", default_value="", description="ppkt | slidr | ... ('' = config's)"),
        DeclareLaunchArgument("config", default_value="", description="lidar_ssl YAML config"),
        DeclareLaunchArgument("output", default_value="runs/pretrain_node", description="run folder"),
    ]
    node = Node(
        package="lidar_ssl",
        executable="pretrain",
        name="pretrain",
        output="screen",
        parameters=[
            params,
            {
                "bags": LaunchConfiguration("bags"),
                "shard_dir": LaunchConfiguration("shard_dir"),
                "method": LaunchConfiguration("method"),
                "config": LaunchConfiguration("config"),
                "output": LaunchConfiguration("output"),
            },
        ],
    )
    return LaunchDescription([*args, node])
