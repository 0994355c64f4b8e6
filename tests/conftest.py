"""Shared test fixtures.

Real-data fixtures are found through one setting, ``LIDAR_SSL_FIXTURES`` (default: ``../shared/fixtures``
beside the repository). Tests that need them skip with a message where they are absent, unless
``LIDAR_SSL_REQUIRE_FIXTURES=1`` (set by ``.ci/run``) makes their absence a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path:
    return Path(os.environ.get("LIDAR_SSL_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Root of the real-data fixtures (``../shared/fixtures``); skips (or fails in CI) when absent."""
    root = fixtures_root()
    if not (root / "README.md").is_file():
        message = (
            f"real-data fixtures not found at {root}; set LIDAR_SSL_FIXTURES to the shared/fixtures folder"
        )
        if os.environ.get("LIDAR_SSL_REQUIRE_FIXTURES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def nuscenes_root(fixtures_dir: Path) -> Path:
    return fixtures_dir / "nuscenes-mini-1"


@pytest.fixture(scope="session")
def kitti_object_root(fixtures_dir: Path) -> Path:
    return fixtures_dir / "kitti-object"


@pytest.fixture(scope="session")
def semantickitti_root(fixtures_dir: Path) -> Path:
    return fixtures_dir / "semantickitti"
