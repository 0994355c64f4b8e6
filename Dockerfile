# lidar_ssl on ROS 2 Jazzy with CUDA PyTorch, spconv and TensorRT, the ROS package built with colcon.
#
# NOT BUILT OR TESTED HERE: the development machines have no Docker engine and no GPU. Kept simple on
# purpose; see docs/ros.md ("Docker" and "Jetson") for how it is meant to be used.
#
#   docker build -t lidar_ssl .
#   docker run --gpus all --net host -v /data:/data lidar_ssl \
#       ros2 launch lidar_ssl segment.launch.py model:=/data/models/seg_package device:=cuda backend:=tensorrt
FROM ros:jazzy-ros-base

# ROS packages the nodes use that ros-base lacks (message packages, bag storage, the viewer bridge)
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-venv python3-colcon-common-extensions \
        ros-jazzy-tf2-msgs ros-jazzy-std-srvs ros-jazzy-diagnostic-msgs ros-jazzy-lifecycle-msgs \
        ros-jazzy-rosbag2-storage-mcap ros-jazzy-foxglove-bridge \
    && rm -rf /var/lib/apt/lists/*

# Python side in a venv that sees the ROS Python packages (rclpy comes from /opt/ros, not from pip).
# CUDA builds: torch from the cu126 index (bundles its CUDA runtime; the host needs an NVIDIA driver
# and the NVIDIA container toolkit), spconv for CUDA 12, TensorRT 10 + Torch-TensorRT.
ENV VIRTUAL_ENV=/opt/venv
RUN python3 -m venv --system-site-packages $VIRTUAL_ENV
ENV PATH=$VIRTUAL_ENV/bin:$PATH
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu126 torch==2.13.0

WORKDIR /opt/lidar_ssl
COPY pyproject.toml README.md constraints.txt ./
COPY lidar_ssl_core ./lidar_ssl_core
COPY rosbags ./rosbags
COPY configs ./configs
RUN pip install --no-cache-dir -e '.[gpu,deploy,tensorboard]'

# the ROS package, built and installed with colcon into /opt/lidar_ssl/ros2_ws/install
COPY ros2_ws ./ros2_ws
RUN . /opt/ros/jazzy/setup.sh && cd ros2_ws \
    && colcon build --symlink-install --packages-select lidar_ssl \
    && echo 'source /opt/lidar_ssl/ros2_ws/install/setup.bash' >> /etc/bash.bashrc

# the entrypoint sources /opt/ros/jazzy; add the workspace overlay
RUN sed -i 's|exec "\$@"|source /opt/lidar_ssl/ros2_ws/install/setup.bash\nexec "$@"|' /ros_entrypoint.sh
ENV ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET
CMD ["ros2", "launch", "lidar_ssl", "record.launch.py", "output_dir:=/data/recordings"]
