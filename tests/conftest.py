"""Shared test fixtures.

Real-data fixtures are found through one setting, ``LIDAR_SSL_FIXTURES`` (default: ``../shared/fixtures``
beside the repository). Tests that need them skip with a message where they are absent, unless
``LIDAR_SSL_REQUIRE_FIXTURES=1`` (set by ``.ci/run``) makes their absence a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
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


KillWithOpenChunk = Callable[["subprocess.Popen[bytes]", Path, int], None]


def _kill_with_open_chunk(proc: subprocess.Popen[bytes], folder: Path, min_bytes: int) -> None:
    """SIGKILL a shard writer at a moment when exactly one shard is open with ``min_bytes`` on disk.

    The process is frozen with SIGSTOP first and the folder looked at again, so no rotation or close can
    slip in between the look and the kill: the shard left open is known to hold a complete chunk.
    """
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGSTOP)
        try:
            open_shards = list(folder.glob(".*.partial"))
            stored = sum(f.stat().st_size for f in folder.glob(".*.partial/*/*.mcap"))
        except FileNotFoundError:  # renamed while looked at: not frozen yet, look again
            open_shards, stored = [], 0
        if len(open_shards) == 1 and stored >= min_bytes:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"the writer never had one open shard with {min_bytes} bytes in {folder}")


@pytest.fixture
def kill_with_open_chunk() -> KillWithOpenChunk:
    """The function that kills a shard writer while its open shard holds a complete chunk."""
    return _kill_with_open_chunk
