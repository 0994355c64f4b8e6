"""Helpers for tests that run the nodes over real DDS, kept on this machine.

Every process gets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and one random ``ROS_DOMAIN_ID`` per test,
so DDS traffic never leaves the machine and parallel tests do not see each other.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def ros_env(domain_id: int | None = None) -> dict[str, str]:
    """The environment of a node process: local discovery only, a random domain id (1..100)."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else random.randint(1, 100))
    env.pop("ROS_LOCALHOST_ONLY", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ros_args(params: Mapping[str, object]) -> list[str]:
    """``--ros-args -p name:=value ...`` with YAML-style values (lists as [a, b])."""
    out = ["--ros-args"]
    for name, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple):
            text = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            text = str(value)
        out += ["-p", f"{name}:={text}"]
    return out


def start_node(
    module: str,
    params: Mapping[str, object],
    env: Mapping[str, str],
    log: Path,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start ``python -m lidar_ssl.<module>`` with parameters; output goes to ``log``."""
    handle = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", f"lidar_ssl.{module}", *ros_args(params), *extra_args],
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def stop_node(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGINT (a clean shutdown: the node closes its outputs), then SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def wait_for(predicate: object, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(poll_s)
    return bool(predicate())  # type: ignore[operator]
