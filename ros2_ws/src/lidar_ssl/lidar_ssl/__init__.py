"""lidar_ssl ROS 2 nodes: thin rclpy shells over ``lidar_ssl_core`` (all logic lives there)."""
