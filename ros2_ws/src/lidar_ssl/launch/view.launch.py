"""Show a segmented bag (``lidar-ssl segment`` output) or the live segmenter in RViz or Foxglove.

ros2 launch lidar_ssl view.launch.py bag:=runs/segmented                    # RViz, preset display
ros2 launch lidar_ssl view.launch.py bag:=runs/segmented viewer:=foxglove   # foxglove_bridge :8765
ros2 launch lidar_ssl view.launch.py                                        # live topics only
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("lidar_ssl")
    viewer = LaunchConfiguration("viewer")
    bag = LaunchConfiguration("bag")
    args = [
        DeclareLaunchArgument("bag", default_value="", description="bag to play ('' = live topics)"),
        DeclareLaunchArgument("viewer", default_value="rviz", description="rviz | foxglove"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback speed"),
    ]
    player = Node(
        package="lidar_ssl",
        executable="bag_player",
        name="bag_player",
        output="screen",
        parameters=[
            PathJoinSubstitution([share, "config", "player.yaml"]),
            {"bags": [bag], "rate": LaunchConfiguration("rate"), "loop": True},
        ],
        condition=IfCondition(PythonExpression(["'", bag, "' != ''"])),
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([share, "rviz", "lidar_ssl.rviz"])],
        condition=IfCondition(PythonExpression(["'", viewer, "' == 'rviz'"])),
    )
    bridge = Node(
        package="foxglove_bridge",
        executable="foxglove_bridge",
        name="foxglove_bridge",
        parameters=[{"port": 8765}],
        condition=IfCondition(PythonExpression(["'", viewer, "' == 'foxglove'"])),
    )
    return LaunchDescription([*args, player, rviz, bridge])
