"""The recorder core without ROS: CDR header stamps, shards (rotation, quota, disk full, crash recovery
after SIGKILL), the keep policy, the snapshot ring buffer, and the whole recorder fed from the sample bag."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from lidar_ssl_core.bag import BagReader
from lidar_ssl_core.config import load_config
from lidar_ssl_core.data.bag_index import index_bag
from lidar_ssl_core.errors import CalibrationError, MalformedMessageError
from lidar_ssl_core.msg import header_stamp_ns, tf_message_to_transforms
from lidar_ssl_core.record.calibration_file import dump_static_transforms, load_static_transforms
from lidar_ssl_core.record.cdr import read_header
from lidar_ssl_core.record.config import RecorderConfig
from lidar_ssl_core.record.keep import KeepPolicy
from lidar_ssl_core.record.recorder import Recorder
from lidar_ssl_core.record.ring import RingBuffer
from lidar_ssl_core.record.shards import (
    CUSTOM_RECOVERED,
    RECOVERED_SUFFIX,
    OutMessage,
    ShardWriter,
    closed_shards,
)
from lidar_ssl_core.resources import default_bag
from lidar_ssl_core.sync import LidarCameraSynchronizer

CAMERAS = ["back", "back_left", "back_right", "front", "front_left", "front_right"]


@pytest.fixture(scope="module")
def raw_sample() -> list[tuple[str, str, int, bytes]]:
    with BagReader(default_bag()) as reader:
        return [(m.topic, m.msgtype, m.log_time_ns, bytes(m.raw)) for m in reader.raw_messages()]


def feed(recorder: Recorder, messages: list[tuple[str, str, int, bytes]]) -> None:
    """What the node's subscriptions do, message by message."""
    for topic, _, _, raw in messages:
        if topic == "/lidar/points":
            recorder.on_lidar(raw)
        elif topic == "/tf":
            recorder.on_tf(raw)
        elif topic == "/tf_static":
            recorder.on_tf_static(raw)
        elif topic.endswith("camera_info"):
            recorder.on_camera_info(topic.split("/")[2], raw)
        else:
            recorder.on_image(topic.split("/")[2], raw)
        time.sleep(0.001)  # a live stream: the writer thread keeps up


def test_cdr_header_matches_the_deserialized_header(raw_sample: list[tuple[str, str, int, bytes]]) -> None:
    with BagReader(default_bag()) as reader:
        decoded = {(m.topic, m.log_time_ns): m.msg for m in reader.messages()}
    checked = 0
    for topic, msgtype, t, raw in raw_sample:
        if msgtype == "tf2_msgs/msg/TFMessage":
            continue
        header = read_header(raw)
        msg = decoded[(topic, t)]
        assert header.stamp_ns == header_stamp_ns(msg) and header.frame_id == msg.header.frame_id
        checked += 1
    assert checked == 16 * 13  # lidar + 6 images + 6 camera infos per sweep
    big_endian = (
        b"\x00\x00\x00\x00" + (5).to_bytes(4, "big") + (7).to_bytes(4, "big") + b"\x00\x00\x00\x02a\x00"
    )
    assert read_header(big_endian) == (5_000_000_007, "a", 18)
    for bad in (b"\x00\x01", b"\x07\x07" + bytes(20), b"\x00\x01\x00\x00" + bytes(8) + b"\xff\xff\x00\x00"):
        with pytest.raises(MalformedMessageError):
            read_header(bad, what="/cameras/front/image")


def _msg(i: int, size: int = 1000) -> OutMessage:
    raw = b"\x00\x01\x00\x00" + bytes(size)
    return OutMessage("/lidar/points", "sensor_msgs/msg/PointCloud2", 1_000_000_000 + i * 100_000_000, raw)


def test_shards_rotate_by_size_and_duration_and_evict_the_oldest(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, max_bytes=10_000, max_duration_s=0.35, quota_bytes=0, min_free_bytes=0)
    for i in range(20):
        assert writer.write(_msg(i))
    writer.close()
    shards = closed_shards(tmp_path)
    assert [p.name for p in shards] == [f"shard_{i:06d}" for i in range(5)]  # 4 messages (0.3 s) each
    with BagReader(shards) as reader:
        assert reader.message_count() == 20
    by_size = ShardWriter(tmp_path / "size", max_bytes=2_500, max_duration_s=100, min_free_bytes=0)
    for i in range(9):
        by_size.write(_msg(i))
    by_size.close()
    assert len(closed_shards(tmp_path / "size")) == 3  # 3 x 1004 bytes pass 2500
    one = sum(f.stat().st_size for f in shards[0].iterdir())
    quota = ShardWriter(
        tmp_path, max_bytes=10_000, max_duration_s=0.35, quota_bytes=3 * one, min_free_bytes=0
    )
    assert quota._seq == 5  # numbering continues after the shards already there
    quota.enforce_quota()
    left = [p.name for p in closed_shards(tmp_path)]
    assert left[-1] == "shard_000004" and "shard_000000" not in left and quota.stats.shards_evicted >= 2


def test_disk_full_stops_writing_keeps_what_was_written_and_resumes(tmp_path: Path) -> None:
    free = {"bytes": 10**9}
    now = {"t": 0.0}
    writer = ShardWriter(
        tmp_path,
        min_free_bytes=10**6,
        free_check_s=1.0,
        free_bytes=lambda _: free["bytes"],
        clock=lambda: now["t"],
    )
    assert writer.write(_msg(0)) and writer.write(_msg(1))
    free["bytes"] = 10
    now["t"] = 2.0
    assert not writer.write(_msg(2)) and not writer.write(_msg(3))
    assert writer.stats.state == "disk_full" and writer.stats.dropped_disk_full == 2
    assert len(closed_shards(tmp_path)) == 1  # the open shard was closed whole when the disk filled
    free["bytes"] = 10**9
    now["t"] = 4.0
    assert writer.write(_msg(4))
    resumed = writer.stats  # a new name: mypy keeps the narrowing to "disk_full" on writer.stats.state
    assert resumed.state == "ok"
    writer.close()
    with BagReader(closed_shards(tmp_path)) as reader:
        assert reader.message_count() == 3


def test_keep_policy_rate_travel_and_low_confidence() -> None:
    policy = KeepPolicy(keyframe_hz=2.0, min_travel_m=1.0, confidence_threshold=0.3)
    s = 1_000_000_000
    origin = np.zeros(3)
    assert policy.decide(0, position=origin) == "keyframe"
    assert policy.decide(s // 10, position=origin + 5) is None  # 0.1 s later: rate
    assert policy.decide(s, position=origin + 0.5) is None  # 1 s later but only 0.5 m: stationary
    assert policy.decide(2 * s, position=origin + 2) == "keyframe"
    assert policy.decide(2 * s + 1, confidence=0.1) == "low_confidence"  # unsure: kept whatever the rate
    assert policy.stats.skipped == {"rate": 1, "stationary": 1}
    every = KeepPolicy(keyframe_hz=0)
    assert all(every.decide(i) == "keyframe" for i in range(5))
    ranked = KeepPolicy(keyframe_hz=1e-6, low_confidence_fraction=0.2)
    ranked.decide(0)
    kept = [ranked.decide(i + 1, confidence=c) for i, c in enumerate(np.linspace(0.5, 1.0, 20))]
    assert kept[:10] == [None] * 10  # fewer than 10 scans seen: no ranking yet
    assert ranked.decide(100, confidence=0.4) == "low_confidence"  # lowest of the recent scans
    assert ranked.decide(101, confidence=0.99) is None


def test_ring_buffer_keeps_the_last_seconds_within_its_memory_bound() -> None:
    ring = RingBuffer(seconds=1.0, max_bytes=10_000)
    for i in range(30):  # 0.1 s apart, 1004 bytes each
        ring.add(_msg(i))
    items = ring.snapshot()
    assert items[-1].stamp_ns == _msg(29).stamp_ns
    assert len(items) == 9 and ring.nbytes <= 10_000 and ring.evicted_for_size > 0  # bytes bind first
    roomy = RingBuffer(seconds=1.0, max_bytes=10**9)
    for i in range(30):
        roomy.add(_msg(i))
    assert [m.stamp_ns for m in roomy.snapshot()] == [_msg(i).stamp_ns for i in range(19, 30)]


def test_calibration_file_round_trip_and_errors(tmp_path: Path) -> None:
    with BagReader(default_bag()) as reader:
        statics = [t for m in reader.messages(["/tf_static"]) for t in tf_message_to_transforms(m.msg)]
    path = tmp_path / "calib.yaml"
    path.write_text(dump_static_transforms(statics))
    loaded = load_static_transforms(path)
    assert [(t.parent, t.child) for t in loaded] == [(t.parent, t.child) for t in statics]
    assert max(float(np.abs(a.matrix - b.matrix).max()) for a, b in zip(loaded, statics, strict=True)) < 1e-9
    path.write_text(
        "transforms:\n  - {parent: base_link, child: x, translation: [0, 0], rotation_xyzw: [0, 0, 0, 1]}\n"
    )
    with pytest.raises(CalibrationError, match=r"transforms\[0\]"):
        load_static_transforms(path)


def _frames(bag: Path) -> set[tuple[int, tuple[tuple[str, int], ...]]]:
    data = load_config().data
    index = index_bag(bag, data)
    return {
        (f.lidar.stamp_ns, tuple(sorted((v.camera, v.image.stamp_ns) for v in f.views))) for f in index.frames
    }


def _keep_everything(output_dir: Path, **overrides: object) -> RecorderConfig:
    """The sample bag's cameras, every sample kept, no confidence topic, no free-space floor."""
    fields: dict[str, object] = {
        "output_dir": str(output_dir),
        "cameras": CAMERAS,
        "keyframe_hz": 0.0,
        "confidence_topic": "",
        "min_free_mb": 0,
    }
    return RecorderConfig.model_validate(fields | overrides)


def test_recorder_keeps_every_synchronized_sample_in_self_contained_shards(
    tmp_path: Path, raw_sample: list[tuple[str, str, int, bytes]]
) -> None:
    recorder = Recorder(_keep_everything(tmp_path / "rec", shard_max_duration_s=0.55))
    recorder.start()
    feed(recorder, raw_sample)
    recorder.stop()
    shards = closed_shards(tmp_path / "rec")
    assert len(shards) >= 3  # 1.5 s of sweeps, 0.55 s per shard
    recorded: set[tuple[int, tuple[tuple[str, int], ...]]] = set()
    data = load_config().data
    reference = {f.lidar.stamp_ns: f for f in index_bag(default_bag(), data).frames}
    for shard in shards:  # each shard is a bag of the profile on its own: calibration, poses, frames
        recorded |= _frames(shard)
        index = index_bag(shard, data)
        assert index.rig.has_poses()  # /tf around its samples came along (the preamble's history)
        for frame in index.frames:  # the same ego-motion compensated projection as the source bag
            want = {v.camera: v.T_cam_lidar for v in reference[frame.lidar.stamp_ns].views}
            assert max(float(np.abs(v.T_cam_lidar - want[v.camera]).max()) for v in frame.views) < 1e-9
    assert recorded == _frames(default_bag())
    status = recorder.status()
    assert status.sync.groups_emitted == 16 and status.samples_written == 16
    assert status.camera_offset_ms["front"] == pytest.approx(0.0) and status.camera_offset_ms["back"] < 0
    snap = recorder.request_snapshot("test").result(30)
    with BagReader(snap) as reader:
        assert reader.message_count("/lidar/points") == 16  # 1.5 s of data < the 10 s window
        assert "/tf_static" in reader.topics


def _adversarial(messages: list[tuple[str, str, int, bytes]]) -> list[tuple[str, str, int, bytes]]:
    """The sample bag as a loaded vehicle delivers it: every other ``back`` image lost in transport (the
    next sweep then matches the image the previous one used: the bag's back camera is exactly half a
    LiDAR period off) and every ``front_left`` image late, after the next sweep."""
    back = [i for i, m in enumerate(messages) if m[0] == "/cameras/back/image/compressed"]
    lost = set(back[::2])
    out: list[tuple[str, str, int, bytes]] = []
    late: list[tuple[str, str, int, bytes]] = []
    for i, m in enumerate(messages):
        if i in lost:
            continue
        if m[0] == "/cameras/front_left/image/compressed":
            late.append(m)
            continue
        out.append(m)
        if m[0] == "/lidar/points":
            out.extend(late[:-1])  # the ones before the latest sweep: one period late
            late = late[-1:]
    return out + late


def _expected_samples(messages: list[tuple[str, str, int, bytes]]) -> dict[int, set[tuple[str, int]]]:
    """Sweep stamp -> its matched images (topic, stamp), synchronized offline in stamp order."""
    sync: LidarCameraSynchronizer[int, tuple[str, int]] = LidarCameraSynchronizer(CAMERAS, 50_000_000, 24)
    groups = []
    for topic, _, t, _ in sorted(messages, key=lambda m: m[2]):
        if topic == "/lidar/points":
            groups += sync.add_lidar(t, t)
        elif topic.endswith("/image/compressed"):
            groups += sync.add_camera(topic.split("/")[2], t, (topic, t))
    groups += sync.flush()
    return {g.lidar_stamp_ns: {m.item for m in g.cameras.values()} for g in groups}


def _stored_twice(ids: list[tuple[str, int | str]]) -> dict[str, int]:
    """Per topic, how many messages are stored more than once."""
    return dict(Counter(topic for (topic, _), n in Counter(ids).items() if n > 1))


def _stored_identities(bag: Path) -> list[tuple[str, int | str]]:
    """Each stored message's identity: its own header stamp, or its content for /tf and /tf_static (the
    log time of a preamble copy is the shard's start, so it does not tell copies apart)."""
    with BagReader(bag) as reader:
        return [
            (m.topic, hashlib.sha256(m.raw).hexdigest() if "tf" in m.topic else read_header(m.raw).stamp_ns)
            for m in reader.raw_messages()
        ]


@pytest.mark.parametrize("pressure", [False, True], ids=["late_and_shared_images", "queue_pressure"])
def test_recorder_stores_each_message_once_per_shard_under_adversarial_timing(
    tmp_path: Path,
    raw_sample: list[tuple[str, str, int, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    pressure: bool,
) -> None:
    """Images shared by two sweeps, late images, /tf arriving while a shard opens (after the writer
    drained its side queue: the preamble's /tf history and the side queue then hold the same message),
    a rotation every few sweeps and (``pressure``) a writer stalled until the queue overflowed: every
    message (preamble copies included) is in a shard at most once, each stored sweep's shard holds its
    images, and the snapshot holds each message once."""
    messages = _adversarial(raw_sample)
    expected = _expected_samples(messages)
    (tf_static,) = (hashlib.sha256(m[3]).hexdigest() for m in raw_sample if m[0] == "/tf_static")
    assert len(expected) == 16 and sum(len(v) for v in expected.values()) == 96
    recorder = Recorder(
        _keep_everything(
            tmp_path / "rec",
            shard_max_duration_s=0.25,  # a new shard every 3 sweeps: shared images straddle rotations
            queue_size=2 if pressure else 32,
        )
    )
    held_tf: deque[bytes] = deque()

    def release_tf() -> None:
        while True:
            try:
                raw = held_tf.popleft()
            except IndexError:
                return
            recorder.on_tf(raw)

    preamble = recorder.shards.preamble
    assert preamble is not None

    def racing_preamble(stamp_ns: int) -> list[OutMessage]:
        release_tf()  # /tf arriving just as the writer opens a shard
        return list(preamble(stamp_ns))

    monkeypatch.setattr(recorder.shards, "preamble", racing_preamble)
    gate = threading.Event()
    if pressure:
        write_sample = recorder.shards.write_sample

        def stalled(msgs: list[OutMessage]) -> int:
            gate.wait(30)
            return write_sample(msgs)

        monkeypatch.setattr(recorder.shards, "write_sample", stalled)
    recorder.start()
    for topic, _, _, raw in messages:
        if topic == "/tf":
            held_tf.append(raw)  # delivered at the next sweep, or by a shard opening before that
            continue
        if topic == "/lidar/points":
            release_tf()
        feed(recorder, [(topic, "", 0, raw)])
    release_tf()
    gate.set()
    recorder.stop()
    status = recorder.status()
    assert status.sync.groups_emitted == 16
    assert status.samples_written + status.dropped_queue_full == 16
    if pressure:
        assert status.dropped_queue_full > 0
    stored_sweeps: set[int] = set()
    for shard in closed_shards(tmp_path / "rec"):
        ids = _stored_identities(shard)
        assert _stored_twice(ids) == {}, shard.name
        present = set(ids)
        sweeps = {t for topic, t in present if topic == "/lidar/points"}
        for sweep in sweeps:  # the sample is whole in this shard, shared images included
            assert expected[int(sweep)] <= present, (shard.name, sweep)
        assert ("/tf_static", tf_static) in present  # the preamble's copy, once
        stored_sweeps |= {int(t) for t in sweeps}
    assert len(stored_sweeps) == status.samples_written and stored_sweeps <= set(expected)
    if not pressure:
        assert status.shards.shards_closed >= 5 and status.shards.duplicates_skipped > 0
    snapshot = _stored_identities(recorder.request_snapshot().result(30))
    assert _stored_twice(snapshot) == {}
    assert sum(topic == "/tf" for topic, _ in snapshot) == sum(m[0] == "/tf" for m in raw_sample)


CRASH_WRITER = textwrap.dedent(
    """
    import sys
    from lidar_ssl_core.bag import BagReader
    from lidar_ssl_core.record.shards import OutMessage, ShardWriter
    from lidar_ssl_core.resources import default_bag

    with BagReader(default_bag()) as r:
        msgs = [(m.topic, m.msgtype, m.log_time_ns, bytes(m.raw)) for m in r.raw_messages()]
    span = msgs[-1][2] - msgs[0][2] + 1
    writer = ShardWriter(sys.argv[1], max_bytes=1_500_000, max_duration_s=1e9, min_free_bytes=0,
                         chunk_size=200_000)
    writer.recover()
    print("ready", flush=True)
    loop = 0
    while True:
        for topic, msgtype, t, raw in msgs:
            writer.write(OutMessage(topic, msgtype, t + loop * span, raw))
        loop += 1
    """
)


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_whole_closed_shards_and_a_recoverable_open_one(
    tmp_path: Path, raw_sample: list[tuple[str, str, int, bytes]], kill_with_open_chunk: Callable[..., None]
) -> None:
    """The recorder crash test: kill -9 mid-write, four times (three at random moments: mid-chunk,
    mid-close, between shards; the last one while a shard is open past its first chunk); closed shards
    read back whole, the shard left open is recovered up to its last complete chunk, and every message
    stored is byte-exact."""
    folder = tmp_path / "shards"
    script = tmp_path / "writer.py"
    script.write_text(CRASH_WRITER)
    source = {}
    span = raw_sample[-1][2] - raw_sample[0][2] + 1
    for topic, _, t, raw in raw_sample:
        source[(topic, t)] = raw
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    recovered: list[Path] = []
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(folder)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        if attempt < 3:
            time.sleep(rng.uniform(0.3, 1.5))
            proc.send_signal(signal.SIGKILL)
        else:  # chunks are 200 kB, shards 1.5 MB: past 400 kB at least one chunk is on disk
            kill_with_open_chunk(proc, folder, rng.randrange(400_000, 1_200_000))
        proc.wait()
        closed = closed_shards(folder)
        for shard in closed:  # whole: opens without recovery, every message reads
            with BagReader(shard, recover=False) as reader:
                assert not reader.damaged
                assert sum(1 for _ in reader.raw_messages()) == reader.message_count() > 0
        writer = ShardWriter(folder, min_free_bytes=0)
        recovered = writer.recover()
        for path in recovered:
            if path.name.endswith(RECOVERED_SUFFIX):
                meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
                assert CUSTOM_RECOVERED in (meta.get("custom_data") or {})
    assert len(recovered) == 1 and recovered[0].name.endswith(RECOVERED_SUFFIX)  # the last kill's shard
    assert not list(folder.glob(".*.partial"))
    n = 0
    for shard in closed_shards(folder):
        with BagReader(shard, recover=False) as reader:
            for m in reader.raw_messages():
                original = source[(m.topic, raw_sample[0][2] + (m.log_time_ns - raw_sample[0][2]) % span)]
                assert bytes(m.raw) == original  # byte-exact, nothing garbled
                n += 1
    assert n > 0


@pytest.mark.parametrize("case", ["closed_not_renamed", "no_metadata", "header_only"])
def test_recovery_of_a_shard_killed_while_closing_or_just_opened(tmp_path: Path, case: str) -> None:
    """The moments a random kill rarely hits, made on purpose."""
    done = ShardWriter(tmp_path / "done", min_free_bytes=0)
    for i in range(5):
        done.write(_msg(i))
    bag = done.close()
    assert bag is not None
    folder = tmp_path / "rec"
    inner = folder / ".shard_000003.partial" / "shard_000003"
    inner.parent.mkdir(parents=True)
    bag.rename(inner)
    mcap = inner / "shard_000000.mcap"
    if case != "closed_not_renamed":
        (inner / "metadata.yaml").unlink()
    if case == "header_only":
        with mcap.open("r+b") as f:
            f.truncate(60)  # magic + header record: no chunk reached the file
    recovered = ShardWriter(folder, min_free_bytes=0).recover()
    assert not list(folder.glob(".*"))
    if case == "header_only":
        assert recovered == [] and not list(folder.iterdir())
        return
    (path,) = recovered
    assert path.name == (
        "shard_000003" if case == "closed_not_renamed" else "shard_000003" + RECOVERED_SUFFIX
    )
    with BagReader(path, recover=False) as reader:
        assert reader.message_count() == 5 and not reader.damaged
    assert ShardWriter(folder, min_free_bytes=0)._seq == 4  # new shards never reuse the number
