# lidar_ssl on ROS 2 Jazzy with CUDA PyTorch. UNTESTED: Docker cannot build on the development machines.
FROM ros:jazzy-ros-base

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-venv ros-jazzy-sensor-msgs-py ros-jazzy-message-filters \
        ros-jazzy-tf2-ros-py ros-jazzy-rosbag2-storage-mcap \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/lidar_ssl
COPY . .
RUN python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir torch==2.13.0 \
    && /opt/venv/bin/pip install --no-cache-dir -e '.[tensorboard,convert]' spconv-cu120 \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps 'nuscenes-devkit>=1.1'
ENV PATH=/opt/venv/bin:$PATH

CMD ["lidar-ssl", "--help"]
