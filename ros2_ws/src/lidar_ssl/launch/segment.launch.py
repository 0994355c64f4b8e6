"""Live segmentation (lifecycle node, configured and activated at start) with config/segmenter.yaml.

ros2 launch lidar_ssl segment.launch.py model:=models/seg_package device:=cuda backend:=tensorrt
ros2 launch lidar_ssl segment.launch.py model:=... bag:=rosbags/synthetic_sample   # with a bag player
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("lidar_ssl")
    args = [
        DeclareLaunchArgument("model", description="model package folder or segmentation checkpoint"),
        DeclareLaunchArgument(
            "backend", default_value="torch", description="torch | spconv | onnxruntime | tensorrt"
        ),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda"),
        DeclareLaunchArgument("input_topic", default_value="/lidar/points", description="PointCloud2 input"),
        DeclareLaunchArgument("bag", default_value="", description="also play this bag ('' = live sensors)"),
    ]
    segmenter = Node(
        package="lidar_ssl",
        executable="segmenter",
        name="segmenter",
        output="screen",
        parameters=[
            PathJoinSubstitution([share, "config", "segmenter.yaml"]),
            {
                "model": LaunchConfiguration("model"),
                "backend": LaunchConfiguration("backend"),
                "device": LaunchConfiguration("device"),
                "input_topic": LaunchConfiguration("input_topic"),
            },
        ],
    )
    player = Node(
        package="lidar_ssl",
        executable="bag_player",
        name="bag_player",
        output="screen",
        parameters=[
            PathJoinSubstitution([share, "config", "player.yaml"]),
            {"bags": [LaunchConfiguration("bag")]},
        ],
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("bag"), "' != ''"])),
    )
    return LaunchDescription([*args, segmenter, player])
