"""The recorder crash test over DDS: the fleet_recorder node is killed with SIGKILL at a random moment
while a bag plays into it; every closed shard reads back whole, and the restarted node recovers the shard
left open (marked as recovered) with every message it holds intact."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytest.importorskip("rclpy", reason="rclpy (the 'ros' extra) is not installed")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ros2_ws" / "src" / "lidar_ssl"))

from lidar_ssl.testing import ros_env, start_node, stop_node, wait_for  # noqa: E402

from lidar_ssl_core.bag import BagReader  # noqa: E402
from lidar_ssl_core.msg import tf_message_to_transforms  # noqa: E402
from lidar_ssl_core.record.calibration_file import dump_static_transforms  # noqa: E402
from lidar_ssl_core.record.shards import CUSTOM_RECOVERED, RECOVERED_SUFFIX, closed_shards  # noqa: E402
from lidar_ssl_core.resources import default_bag  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
CAMERAS = ["back", "back_left", "back_right", "front", "front_left", "front_right"]


def same_cdr(a: bytes, b: bytes) -> bool:
    """Same CDR payload: DDS may add up to 3 bytes of end padding (announced in the encapsulation
    options, bytes 2-3) that the bag's copy lacks."""
    n = min(len(a), len(b))
    return (
        abs(len(a) - len(b)) < 4 and a[:2] == b[:2] and a[4:n] == b[4:n] and not (a[n:] + b[n:]).strip(b"\0")
    )


def test_recorder_killed_with_sigkill_leaves_whole_shards_and_recovers_the_open_one(
    tmp_path: Path, kill_with_open_chunk: Callable[..., None]
) -> None:
    env = ros_env()
    out = tmp_path / "shards"
    with BagReader(default_bag()) as reader:
        statics = [t for m in reader.messages(["/tf_static"]) for t in tf_message_to_transforms(m.msg)]
    calibration = tmp_path / "calibration.yaml"  # no tf2_msgs wheel: extrinsics from a file
    calibration.write_text(dump_static_transforms(statics))
    params = {
        "calibration_file": str(calibration),
        "output_dir": str(out),
        "cameras": CAMERAS,
        "keyframe_hz": 0.0,
        "confidence_topic": "",
        "reliable": True,
        "min_free_mb": 0,
        "shard_max_duration_s": 0.3,  # several closed shards within the 1.6 s bag
        "chunk_kb": 256,  # chunks reach the file often: little is lost
    }
    recorder = start_node("fleet_recorder", params, env, tmp_path / "recorder.log")
    player = start_node(
        "bag_player", {"bags": [str(default_bag())], "rate": 0.5}, env, tmp_path / "player.log"
    )
    try:  # kill once the first shard is being written, at a random moment of the 3 s playback
        assert wait_for(lambda: any(out.glob(".shard_*.partial")), 60), (
            tmp_path / "recorder.log"
        ).read_text()
        time.sleep(random.uniform(0.0, 1.5))  # then at the first moment its open shard holds a chunk
        kill_with_open_chunk(recorder, out, 300_000)
    finally:
        stop_node(player, 30)
    left_open = sorted(p.name for p in out.glob(".shard_*.partial"))
    assert len(left_open) == 1, left_open
    closed_before = closed_shards(out)
    for shard in closed_before:  # whole: opens without any recovery, every message reads
        with BagReader(shard, recover=False) as reader:
            assert not reader.damaged
            assert sum(1 for _ in reader.raw_messages()) == reader.message_count() > 0

    restarted = start_node("fleet_recorder", params, env, tmp_path / "restart.log")
    try:
        assert wait_for(lambda: not any(out.glob(".shard_*.partial")), 60), (
            tmp_path / "restart.log"
        ).read_text()
    finally:
        assert stop_node(restarted) == 0
    new = [p for p in closed_shards(out) if p not in closed_before]
    assert len(new) == 1 and new[0].name.startswith(left_open[0][1 : -len(".partial")])
    with BagReader(new[0], recover=False) as reader:
        assert not reader.damaged and reader.message_count() > 0
        kinds = set(reader.topics)
        assert sum(1 for _ in reader.raw_messages()) == reader.message_count()
    assert {"/tf_static", "/lidar/points"} <= kinds  # still a bag of the profile
    if new[0].name.endswith(RECOVERED_SUFFIX):  # cut mid-chunk: marked, with what was damaged
        meta = yaml.safe_load((new[0] / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        assert CUSTOM_RECOVERED in (meta.get("custom_data") or {})
    with BagReader(default_bag()) as reader:
        source = {
            (m.topic, m.log_time_ns): bytes(m.raw) for m in reader.raw_messages() if m.topic != "/tf_static"
        }
    for shard in closed_shards(out):  # every stored sensor message is byte-exact
        with BagReader(shard) as reader:
            for m in reader.raw_messages(
                [t for t in reader.topics if t != "/tf_static" and "camera_info" not in t]
            ):
                assert same_cdr(bytes(m.raw), source[(m.topic, m.log_time_ns)]), m.topic
