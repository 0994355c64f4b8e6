"""BagWriter / BagReader: round trips per storage and distro, QoS, damage recovery, errors, atomicity."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lidar_ssl_core.bag import BagReader, BagWriter, open_bag
from lidar_ssl_core.errors import BagReadError, BagWriteError, TopicNotFoundError
from lidar_ssl_core.geometry.transforms import make_transform
from lidar_ssl_core.msg.camera_info import camera_info_to_intrinsics, make_camera_info
from lidar_ssl_core.msg.image import compressed_to_rgb, make_compressed_image
from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud, make_pointcloud2, read_cloud
from lidar_ssl_core.msg.tf import make_tf_message, tf_message_to_transforms
from lidar_ssl_core.types import CameraIntrinsics, StampedTransform

T0 = 1_700_000_000_000_000_000
STEP = 100_000_000  # 10 Hz
PC2 = "sensor_msgs/msg/PointCloud2"


def cloud_columns(i: int, n: int = 500) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {
        "x": rng.normal(size=n).astype(np.float32),
        "y": rng.normal(size=n).astype(np.float32),
        "z": rng.normal(size=n).astype(np.float32),
        "intensity": rng.random(n).astype(np.float32),
        "ring": (np.arange(n) % 32).astype(np.uint16),
        "label": rng.integers(0, 30, n).astype(np.uint16),
    }


K = np.array([[500.0, 0.0, 32.0], [0.0, 500.0, 24.0], [0.0, 0.0, 1.0]])
T_LIDAR = make_transform(np.eye(3), [1.0, 0.0, 1.8])


def write_profile_bag(path: Path, *, distro: Any = "jazzy", storage: Any = "mcap", n_clouds: int = 3) -> None:
    """A small bag in the project's profile: clouds, one camera, camera_info, /tf_static, /tf."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (200, 30, 30)
    with BagWriter(path, distro=distro, storage=storage) as w:
        w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        w.add_topic("/lidar/points", PC2)
        w.add_topic("/cameras/front/image/compressed", "sensor_msgs/CompressedImage")
        w.add_topic("/cameras/front/camera_info", "sensor_msgs/msg/CameraInfo")
        ts = w.typestore
        w.write(
            "/tf_static", T0, make_tf_message(ts, [StampedTransform("base_link", "lidar_top", T0, T_LIDAR)])
        )
        for i in range(n_clouds):
            t = T0 + i * STEP
            w.write("/lidar/points", t, make_pointcloud2(ts, cloud_columns(i), t, "lidar_top"))
            w.write(
                "/cameras/front/image/compressed", t + 1, make_compressed_image(ts, image, t + 1, "front")
            )
            intr = CameraIntrinsics(K=K, width=64, height=48, frame_id="front")
            w.write("/cameras/front/camera_info", t + 1, make_camera_info(ts, intr, t + 1))
            pose = make_transform(np.eye(3), [float(i), 0.0, 0.0])
            w.write("/tf", t + 2, make_tf_message(ts, [StampedTransform("map", "base_link", t + 2, pose)]))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize(("distro", "version"), [("humble", 8), ("jazzy", 9)])
def test_round_trip(tmp_path: Path, storage: str, distro: str, version: int) -> None:
    bag = tmp_path / "bag"
    write_profile_bag(bag, distro=distro, storage=storage)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == version
    assert meta["storage_identifier"] == storage
    assert sorted(p.name for p in bag.iterdir()) == sorted(
        ["metadata.yaml", f"bag.{'mcap' if storage == 'mcap' else 'db3'}"]
    )
    assert not list(tmp_path.glob(".*"))  # no staging leftovers

    with BagReader(bag) as r:
        assert r.topics == {
            "/cameras/front/camera_info": "sensor_msgs/msg/CameraInfo",
            "/cameras/front/image/compressed": "sensor_msgs/msg/CompressedImage",
            "/lidar/points": PC2,
            "/tf": "tf2_msgs/msg/TFMessage",
            "/tf_static": "tf2_msgs/msg/TFMessage",
        }
        assert r.message_count() == 13
        assert r.message_count("/lidar/points") == 3
        assert r.start_ns == T0
        assert r.duration == 2 * STEP + 2
        assert r.damaged == []
        msgs = list(r.messages())
        assert [m.log_time_ns for m in msgs] == sorted(m.log_time_ns for m in msgs)
        clouds = [m for m in msgs if m.topic == "/lidar/points"]
        for i, m in enumerate(clouds):
            cloud = cloud_to_pointcloud(m.msg)
            cols = cloud_columns(i)
            assert cloud.stamp_ns == m.log_time_ns == T0 + i * STEP
            np.testing.assert_array_equal(cloud.xyz[:, 2], cols["z"])
            np.testing.assert_array_equal(cloud.label, cols["label"])
        image = next(m for m in msgs if m.topic.endswith("compressed"))
        assert tuple(compressed_to_rgb(image.msg)[10, 5]) == pytest.approx((200, 30, 30), abs=4)
        info = next(m for m in msgs if m.topic.endswith("camera_info"))
        np.testing.assert_array_equal(camera_info_to_intrinsics(info.msg).K, K)
        (static,) = tf_message_to_transforms(next(m for m in msgs if m.topic == "/tf_static").msg)
        np.testing.assert_allclose(static.matrix, T_LIDAR)
        assert r.stats.read["/tf"] == 3


@pytest.mark.parametrize(("distro", "expected"), [("humble", "durability: 1"), ("jazzy", "transient_local")])
def test_tf_static_is_recorded_transient_local(tmp_path: Path, distro: str, expected: str) -> None:
    bag = tmp_path / "bag"
    write_profile_bag(bag, distro=distro, n_clouds=1)
    topics = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"][
        "topics_with_message_count"
    ]
    qos = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"] for t in topics}
    static = qos["/tf_static"] if isinstance(qos["/tf_static"], str) else yaml.safe_dump(qos["/tf_static"])
    other = qos["/tf"] if isinstance(qos["/tf"], str) else yaml.safe_dump(qos["/tf"])
    assert expected in static
    assert "depth: 1" in static
    assert expected not in other
    if distro == "humble":
        assert isinstance(qos["/tf_static"], str)  # v8: QoS embedded as a YAML string, as Humble reads it


def test_standalone_mcap_and_several_bags_merge(tmp_path: Path) -> None:
    write_profile_bag(tmp_path / "a", n_clouds=2)
    with BagWriter(tmp_path / "b", storage="sqlite3") as w:
        w.add_topic("/lidar/points", PC2)
        w.write("/lidar/points", T0 + 5, make_pointcloud2(w.typestore, cloud_columns(9), T0 + 5, "lidar_top"))
    with open_bag([tmp_path / "a" / "a.mcap", tmp_path / "b"]) as r:
        times = [(m.topic, m.log_time_ns) for m in r.messages(["/lidar/points"])]
    assert times == [("/lidar/points", T0), ("/lidar/points", T0 + 5), ("/lidar/points", T0 + STEP)]


def test_time_window_and_topic_errors(tmp_path: Path) -> None:
    write_profile_bag(tmp_path / "bag")
    with BagReader(tmp_path / "bag") as r:
        window = [
            m.log_time_ns for m in r.messages(["/lidar/points"], start_ns=T0 + 1, stop_ns=T0 + 2 * STEP)
        ]
        assert window == [T0 + STEP]
        assert r.require_topic("/lidar/points", "sensor_msgs/PointCloud2") == PC2
        with pytest.raises(TopicNotFoundError) as info:
            r.require_topic("/velodyne_points", PC2)
        assert "/lidar/points" in str(info.value)
        assert "/tf" not in str(info.value)
        with pytest.raises(TopicNotFoundError, match="it has type sensor_msgs/msg/PointCloud2"):
            r.require_topic("/lidar/points", "sensor_msgs/msg/Image")
        with pytest.raises(TopicNotFoundError, match="/nope"):
            list(r.messages(["/nope"]))


def test_undeserializable_message_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bag = tmp_path / "bag"
    with BagWriter(bag) as w:
        w.add_topic("/lidar/points", PC2)
        for i in range(3):
            t = T0 + i
            if i == 1:
                w.write_raw("/lidar/points", t, b"\x00\x01\x00\x00garbage")
            else:
                w.write("/lidar/points", t, make_pointcloud2(w.typestore, cloud_columns(i), t, "lidar_top"))
    with caplog.at_level(logging.WARNING), BagReader(bag) as r:
        got = [m.log_time_ns for m in r.messages()]
        assert got == [T0, T0 + 2]
        assert r.stats.n_skipped == 1
        assert sum(r.stats.skipped["/lidar/points"].values()) == 1
    assert "cannot deserialize" in caplog.text


def cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_bag_yields_what_it_can(tmp_path: Path, storage: Any) -> None:
    bag = tmp_path / "bag"
    n = 60
    with BagWriter(bag, storage=storage) as w:  # ~2 MB: the mcap has 2+ chunks
        w.add_topic("/lidar/points", PC2)
        for i in range(n):
            w.write(
                "/lidar/points",
                T0 + i * STEP,
                make_pointcloud2(w.typestore, cloud_columns(i, 2000), T0 + i * STEP, "l"),
            )
    storage_file = next(bag.glob("*.mcap" if storage == "mcap" else "*.db3"))
    cut(storage_file, 0.6)

    with BagReader(bag) as r:
        assert len(r.damaged) == 1
        assert storage_file.name in r.damaged[0]
        count = r.message_count("/lidar/points")
        assert n * 0.4 < count < n * 0.6
        got: list[Any] = []
        with pytest.raises(BagReadError) as info:
            got.extend(r.messages())
        assert len(got) == count
        assert storage_file.name in str(info.value)
        assert "on_error='skip'" in str(info.value)
        for i, m in enumerate(got):  # a prefix of what was written, intact
            assert m.log_time_ns == T0 + i * STEP
            np.testing.assert_array_equal(read_cloud(m.msg)["x"], cloud_columns(i, 2000)["x"])
        again = list(r.messages(on_error="skip"))
        assert len(again) == count
        assert len(r.stats.storage_errors) == 2


def test_truncated_mcap_without_metadata(tmp_path: Path) -> None:
    """A recording killed before metadata.yaml was written: the storage file is read directly."""
    bag = tmp_path / "bag"
    write_profile_bag(bag, n_clouds=40)
    (bag / "metadata.yaml").unlink()
    cut(bag / "bag.mcap", 0.7)
    with BagReader(bag) as r:
        msgs = list(r.messages(["/lidar/points"], on_error="skip"))
    assert len(msgs) > 5
    assert r.stats.storage_errors


def test_unreadable_paths_raise_bag_read_error(tmp_path: Path) -> None:
    with pytest.raises(BagReadError, match="does not exist"):
        BagReader(tmp_path / "missing").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagReadError, match="not a rosbag2 folder"):
        BagReader(tmp_path / "empty").open()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagReadError, match="not a bag"):
        BagReader(tmp_path / "notes.txt").open()
    (tmp_path / "fake.mcap").write_bytes(b"not an mcap at all" * 10)
    with pytest.raises(BagReadError, match=r"fake\.mcap"):
        BagReader(tmp_path / "fake.mcap").open()
    (tmp_path / "fake.db3").write_bytes(b"\x00" * 300)
    with pytest.raises(BagReadError, match=r"fake\.db3"):
        BagReader(tmp_path / "fake.db3").open()


def test_corrupt_metadata_is_named(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    write_profile_bag(bag, n_clouds=1)
    meta = bag / "metadata.yaml"
    meta.write_text("rosbag2_bagfile_information: [unclosed")
    with pytest.raises(BagReadError, match=r"metadata\.yaml cannot be parsed"):
        BagReader(bag).open()
    meta.write_text("something_else: 1\n")
    with pytest.raises(BagReadError, match="rosbag2_bagfile_information"):
        BagReader(bag).open()
    meta.write_text(yaml.safe_dump({"rosbag2_bagfile_information": {"version": 9}}))
    with pytest.raises(BagReadError, match="storage_identifier"):
        BagReader(bag).open()


def test_writer_refuses_to_overwrite_and_replaces_when_asked(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    write_profile_bag(bag, n_clouds=1)
    with pytest.raises(BagWriteError, match="exists already"):
        BagWriter(bag)
    write_profile_bag_overwrite = BagWriter(bag, overwrite=True, storage="sqlite3")
    with write_profile_bag_overwrite as w:
        w.add_topic("/lidar/points", PC2)
        w.write("/lidar/points", T0, make_pointcloud2(w.typestore, cloud_columns(0), T0, "l"))
    assert sorted(p.name for p in bag.iterdir()) == ["bag.db3", "metadata.yaml"]
    with BagReader(bag) as r:
        assert r.topics == {"/lidar/points": PC2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_exception_inside_writer_leaves_nothing(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    with pytest.raises(RuntimeError, match="boom"), BagWriter(bag) as w:
        w.add_topic("/lidar/points", PC2)
        w.write("/lidar/points", T0, make_pointcloud2(w.typestore, cloud_columns(0), T0, "l"))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_usage_errors(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "bag", distro="kilted") as w:
        with pytest.raises(BagWriteError, match="add_topic"):
            w.write("/lidar/points", T0, None)
        with pytest.raises(BagWriteError, match="not in the kilted typestore"):
            w.add_topic("/x", "my_msgs/msg/Unknown")
        assert w.msg_class("sensor_msgs/PointCloud2") is w.typestore.types[PC2]
    with pytest.raises(BagWriteError, match="unknown distro"):
        BagWriter(tmp_path / "other", distro="rolling")  # type: ignore[arg-type]


def test_independent_mcap_reader_decodes_our_bag(tmp_path: Path) -> None:
    pytest.importorskip("mcap_ros2.reader")
    from mcap_ros2.reader import read_ros2_messages

    bag = tmp_path / "bag"
    write_profile_bag(bag, n_clouds=2)
    decoded = [m for m in read_ros2_messages(str(bag / "bag.mcap"), topics=["/lidar/points"])]
    assert len(decoded) == 2
    msg = decoded[0].ros_msg
    assert msg.width == 500
    assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "ring", "label"]
    pts = np.frombuffer(bytes(msg.data), dtype=np.float32, count=msg.width * msg.point_step // 4)
    x = pts.reshape(msg.width, msg.point_step // 4)[:, 0]
    np.testing.assert_array_equal(x, cloud_columns(0)["x"])
    assert decoded[0].log_time_ns == T0


# ------------------------------------------------------------------------------ raw (serialized) access
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_raw_messages_match_deserialized_ones(tmp_path: Path, storage: Any) -> None:
    write_profile_bag(tmp_path / "a", storage=storage, n_clouds=3)
    write_profile_bag(tmp_path / "b", n_clouds=1)  # a second bag: merged by log time like messages()
    with BagReader([tmp_path / "a", tmp_path / "b"]) as r:
        full = list(r.messages(["/lidar/points", "/tf"]))
        raw = list(r.raw_messages(["/lidar/points", "/tf"]))
        assert [(m.topic, m.log_time_ns, m.msgtype) for m in raw] == [
            (m.topic, m.log_time_ns, m.msgtype) for m in full
        ]
        for m_raw, m_full in zip(raw, full, strict=True):
            assert isinstance(m_raw.raw, bytes | memoryview)
            again: Any = r.typestore.deserialize_cdr(bytes(m_raw.raw), m_raw.msgtype)
            if m_raw.topic == "/lidar/points":
                np.testing.assert_array_equal(again.data, m_full.msg.data)
                assert again.header.stamp == m_full.msg.header.stamp
        window = [
            m.log_time_ns for m in r.raw_messages("/lidar/points", start_ns=T0 + 1, stop_ns=T0 + 3 * STEP)
        ]
        assert window == [T0 + STEP, T0 + 2 * STEP]
        assert len(list(r.raw_messages())) == r.message_count()
        with pytest.raises(TopicNotFoundError, match="/nope"):
            list(r.raw_messages(["/nope"]))
        with pytest.raises(ValueError, match="on_error"):
            list(r.raw_messages(on_error="ignore"))  # type: ignore[arg-type]


def test_raw_messages_of_a_truncated_bag(tmp_path: Path) -> None:
    """A recovered (cut short) mcap: raw messages up to the damage, then raise or end per on_error."""
    bag = tmp_path / "bag"
    with BagWriter(bag) as w:
        w.add_topic("/lidar/points", PC2)
        for i in range(40):
            t = T0 + i * STEP
            w.write("/lidar/points", t, make_pointcloud2(w.typestore, cloud_columns(i, 2000), t, "l"))
    cut(bag / "bag.mcap", 0.6)
    with BagReader(bag) as r:
        count = r.message_count("/lidar/points")
        got: list[Any] = []
        with pytest.raises(BagReadError, match=r"bag\.mcap"):
            got.extend(r.raw_messages(["/lidar/points"]))
        assert 10 < len(got) == count
        skipped = list(r.raw_messages(["/lidar/points"], on_error="skip"))
        assert [m.log_time_ns for m in skipped] == [T0 + i * STEP for i in range(count)]
        last = r.typestore.deserialize_cdr(bytes(skipped[-1].raw), PC2)
        np.testing.assert_array_equal(read_cloud(last)["x"], cloud_columns(count - 1, 2000)["x"])
        assert len(r.stats.storage_errors) == 2


# ------------------------------------------------------------------------------------------ durability
def test_bag_files_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync
    bag = tmp_path / "bag"

    def fsync(fd: int) -> None:
        name = str(Path(f"/proc/self/fd/{fd}").readlink())
        synced.append((name, bag.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_profile_bag(bag, n_clouds=1)
    staging = str(tmp_path / ".bag.partial" / "bag")
    before = [name for name, renamed in synced if not renamed]
    assert sorted(before) == [staging, f"{staging}/bag.mcap", f"{staging}/metadata.yaml"]
    assert [name for name, renamed in synced if renamed] == [str(tmp_path)]  # the rename itself
    synced.clear()
    with BagWriter(tmp_path / "fast", sync=False) as w:
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
    assert synced == []
    assert (tmp_path / "fast" / "metadata.yaml").is_file()
