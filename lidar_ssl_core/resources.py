"""Where the embedded defaults live (the sample bag committed under ``rosbags/``)."""

from __future__ import annotations

import os
from pathlib import Path

from lidar_ssl_core.errors import DatasetError

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BAG_NAME = "synthetic_sample"


def default_bag() -> Path:
    """The embedded synthetic sample bag; ``LIDAR_SSL_SAMPLE_BAG`` overrides its location."""
    override = os.environ.get("LIDAR_SSL_SAMPLE_BAG")
    path = Path(override) if override else REPO_ROOT / "rosbags" / SAMPLE_BAG_NAME
    if not path.exists():
        raise DatasetError(
            f"the embedded sample bag is not at {path}: run from a checkout of the repository, set "
            "LIDAR_SSL_SAMPLE_BAG, or make one with `lidar-ssl synth --out <path>`"
        )
    return path
