"""``python -m lidar_ssl_core``: the ``lidar-ssl`` CLI (so ``torchrun -m lidar_ssl_core pretrain`` works)."""

from lidar_ssl_core.cli import app

if __name__ == "__main__":
    app()
