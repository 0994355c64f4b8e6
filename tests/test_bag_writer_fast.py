"""The fast mcap storage (bag.mcap_writer): rosbags' bytes, every reader, recovery, buffer ownership."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

from lidar_ssl_core.bag import BagReader, BagWriter
from lidar_ssl_core.bag.writer import make_qos
from lidar_ssl_core.errors import BagWriteError
from lidar_ssl_core.geometry.transforms import make_transform
from lidar_ssl_core.msg.camera_info import make_camera_info
from lidar_ssl_core.msg.image import compressed_from_bytes
from lidar_ssl_core.msg.pointcloud2 import make_pointcloud2, read_cloud
from lidar_ssl_core.msg.tf import make_tf_message, tf_message_to_transforms
from lidar_ssl_core.types import CameraIntrinsics, StampedTransform

T0 = 1_700_000_000_000_000_000
STEP = 100_000_000
PC2 = "sensor_msgs/msg/PointCloud2"
TF = "tf2_msgs/msg/TFMessage"
INFO = "sensor_msgs/msg/CameraInfo"
JPEG = "sensor_msgs/msg/CompressedImage"
DISTROS = [("humble", 8), ("jazzy", 9), ("kilted", 9)]
K = np.array([[721.5, 0.0, 609.6], [0.0, 721.5, 172.9], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def scan(kitti_object_root: Path) -> dict[str, np.ndarray]:
    """A real KITTI velodyne scan (~1.9 MB as PointCloud2: larger than one 1 MiB chunk)."""
    pts = np.fromfile(kitti_object_root / "training" / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
    return {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "intensity": pts[:, 3]}


@pytest.fixture(scope="module")
def png(kitti_object_root: Path) -> bytes:
    return (kitti_object_root / "training" / "image_2" / "000000.png").read_bytes()


def small_cloud(i: int, n: int = 3000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {k: rng.normal(size=n).astype(np.float32) for k in ("x", "y", "z", "intensity")}


def workload(ts: Any, scan: dict[str, np.ndarray], png: bytes) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time, message): big scans, mid-size clouds, a real PNG, many tiny tf messages."""
    static = [StampedTransform("base_link", "lidar_top", T0, make_transform(np.eye(3), [0.8, 0.0, 1.7]))]
    yield "/tf_static", T0, make_tf_message(ts, static)
    intr = CameraIntrinsics(K=K, width=1242, height=375, frame_id="image_2")
    for i in range(4):
        t = T0 + i * STEP
        cloud = scan if i % 2 == 0 else small_cloud(i)
        yield "/lidar/points", t, make_pointcloud2(ts, cloud, t, "lidar_top")
        image = compressed_from_bytes(ts, png, t, "image_2")
        yield "/cameras/image_2/image/compressed", t, image
        yield "/cameras/image_2/camera_info", t, make_camera_info(ts, intr, t)
        for k in range(150):  # > 64 KiB of small records per frame: packed, and across chunk ends
            tk = t + k * 600_000
            pose = make_transform(np.eye(3), [i + k / 150, 0.0, 0.0])
            yield "/tf", tk, make_tf_message(ts, [StampedTransform("map", "base_link", tk, pose)])


TOPICS = [
    ("/tf_static", TF, True),
    ("/lidar/points", PC2, False),
    ("/cameras/image_2/image/compressed", JPEG, False),
    ("/cameras/image_2/camera_info", INFO, False),
]
LATE_TOPIC = ("/tf", TF, False)  # added after messages were written: its channel lands in a later chunk


def write_ours(path: Path, distro: Any, compress: bool, msgs: list[tuple[str, int, Any]], **kw: Any) -> None:
    with BagWriter(path, distro=distro, compress=compress, **kw) as w:
        for topic, msgtype, latched in TOPICS:
            w.add_topic(topic, msgtype, latched=latched)
        for n, (topic, t, msg) in enumerate(msgs):
            if n == 3:
                w.add_topic(*LATE_TOPIC[:2], latched=LATE_TOPIC[2])
            if topic == "/cameras/image_2/image/compressed":  # the raw path, bytes handed in
                w.write_raw(topic, t, bytes(w.typestore.serialize_cdr(msg, JPEG)))
            else:
                w.write(topic, t, msg)


def write_rosbags(path: Path, distro: Any, compress: bool, msgs: list[tuple[str, int, Any]]) -> None:
    """The same bag through rosbags' own Writer and mcap storage (the reference bytes)."""
    version: Literal[8, 9] = 8 if distro == "humble" else 9
    bw = BagWriter(path.parent / "unused", distro=distro)  # only for the same typestore
    ts = bw.typestore
    writer = Writer(path, version=version, storage_plugin=StoragePlugin.MCAP)
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer:
        conns = {}
        for topic, msgtype, latched in TOPICS:
            conns[topic] = writer.add_connection(
                topic, msgtype, typestore=ts, offered_qos_profiles=[make_qos(latched=latched)]
            )
        for n, (topic, t, msg) in enumerate(msgs):
            if n == 3:
                conns["/tf"] = writer.add_connection(
                    "/tf", TF, typestore=ts, offered_qos_profiles=[make_qos(latched=False)]
                )
            msgtype = conns[topic].msgtype
            writer.write(conns[topic], t, ts.serialize_cdr(msg, msgtype))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
@pytest.mark.parametrize(("distro", "version"), DISTROS)
def test_same_bytes_and_metadata_as_rosbags(
    tmp_path: Path, scan: dict[str, np.ndarray], png: bytes, distro: str, version: int, compress: bool
) -> None:
    """Byte-identical .mcap and metadata.yaml: what reads rosbags' bags (ros2 bag too) reads these."""
    ts = BagWriter(tmp_path / "x", distro=distro).typestore  # type: ignore[arg-type]
    msgs = list(workload(ts, scan, png))
    ours, ref = tmp_path / "ours" / "bag", tmp_path / "ref" / "bag"
    ref.parent.mkdir()
    write_ours(ours, distro, compress, msgs)
    write_rosbags(ref, distro, compress, msgs)
    data = (ours / "bag.mcap").read_bytes()
    assert data == (ref / "bag.mcap").read_bytes()
    assert len(data) > 4_000_000
    assert (ours / "metadata.yaml").read_text() == (ref / "metadata.yaml").read_text()

    info = yaml.safe_load((ours / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == version
    assert info["storage_identifier"] == "mcap"
    assert info["relative_file_paths"] == ["bag.mcap"]
    assert info["message_count"] == len(msgs) == 1 + 4 * 153
    assert info["starting_time"]["nanoseconds_since_epoch"] == T0
    assert info["duration"]["nanoseconds"] == max(t for _, t, _ in msgs) - T0
    assert info["compression_format"] == "" and info["compression_mode"] == ""  # chunk compression
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert {k: v["message_count"] for k, v in topics.items()} == {
        "/tf_static": 1,
        "/lidar/points": 4,
        "/cameras/image_2/image/compressed": 4,
        "/cameras/image_2/camera_info": 4,
        "/tf": 600,
    }
    qos = topics["/tf_static"]["topic_metadata"]["offered_qos_profiles"]
    qos_text = qos if isinstance(qos, str) else yaml.safe_dump(qos)
    assert ("durability: 1" if version == 8 else "transient_local") in qos_text
    assert "depth: 1" in qos_text
    assert topics["/tf"]["topic_metadata"]["type_description_hash"].startswith("RIHS01_")


def _mcap_summary(path: Path) -> Any:
    with path.open("rb") as f:
        return make_reader(f).get_summary()


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
@pytest.mark.parametrize(("distro", "version"), DISTROS)
def test_three_readers_round_trip(
    tmp_path: Path, scan: dict[str, np.ndarray], png: bytes, distro: str, version: int, compress: bool
) -> None:
    bag = tmp_path / "bag"
    ts = BagWriter(tmp_path / "x", distro=distro).typestore  # type: ignore[arg-type]
    msgs = list(workload(ts, scan, png))
    write_ours(bag, distro, compress, msgs)
    clouds = [(t, m) for topic, t, m in msgs if topic == "/lidar/points"]

    # our BagReader
    with BagReader(bag) as r:
        assert not r.damaged
        assert r.message_count() == len(msgs)
        got = list(r.messages(["/lidar/points", "/cameras/image_2/image/compressed", "/tf"]))
    lidar = [m for m in got if m.topic == "/lidar/points"]
    assert [m.log_time_ns for m in lidar] == [t for t, _ in clouds]
    for m, (_, sent) in zip(lidar, clouds, strict=True):
        np.testing.assert_array_equal(read_cloud(m.msg)["x"], read_cloud(sent)["x"])
    image = next(m for m in got if m.topic.endswith("compressed"))
    assert bytes(image.msg.data) == png
    tf = [m for m in got if m.topic == "/tf"]
    assert len(tf) == 600
    (pose,) = tf_message_to_transforms(tf[151].msg)
    np.testing.assert_allclose(pose.matrix[:3, 3], [1 + 1 / 150, 0.0, 0.0])

    # rosbags' AnyReader
    with AnyReader([bag], default_typestore=ts) as reader:
        conns = [c for c in reader.connections if c.topic == "/lidar/points"]
        read = [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages(connections=conns)]
        assert sum(c.msgcount for c in reader.connections) == len(msgs)
    assert [t for t, _ in read] == [t for t, _ in clouds]
    np.testing.assert_array_equal(read_cloud(read[0][1])["z"], scan["z"])

    # the mcap library with its own ROS 2 decoder (definitions from the file's schemas)
    mcap_file = bag / "bag.mcap"
    with mcap_file.open("rb") as f:
        decoded = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    assert len(decoded) == len(msgs)
    scans = [(m.log_time, d) for s, c, m, d in decoded if c.topic == "/lidar/points"]
    assert [t for t, _ in scans] == [t for t, _ in clouds]
    first = scans[0][1]
    assert first.width == len(scan["x"]) and first.point_step == 16
    xyz = np.frombuffer(bytes(first.data), np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(xyz[:, 1], scan["y"])
    summary = _mcap_summary(mcap_file)
    assert summary.statistics.message_count == len(msgs)
    assert {ci.compression for ci in summary.chunk_indexes} == {"zstd" if compress else ""}
    assert len(summary.chunk_indexes) >= 3
    assert summary.statistics.message_start_time == T0
    assert {c.topic for c in summary.channels.values()} == {t for t, _, _ in [*TOPICS, LATE_TOPIC]}
    static = next(c for c in summary.channels.values() if c.topic == "/tf_static")
    assert ("durability: 1" if version == 8 else "transient_local") in static.metadata["offered_qos_profiles"]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_truncated_file_is_recovered(tmp_path: Path, scan: dict[str, np.ndarray], compress: bool) -> None:
    bag = tmp_path / "bag"
    n = 12
    with BagWriter(bag, compress=compress) as w:
        w.add_topic("/lidar/points", PC2)
        for i in range(n):
            cloud = {k: v[: 20_000 + 1000 * i] for k, v in scan.items()}
            w.write("/lidar/points", T0 + i * STEP, make_pointcloud2(w.typestore, cloud, T0 + i * STEP, "l"))
    mcap_file = bag / "bag.mcap"
    data = mcap_file.read_bytes()
    mcap_file.write_bytes(data[: int(len(data) * 0.55)])
    with BagReader(bag) as r:
        assert len(r.damaged) == 1 and "bag.mcap" in r.damaged[0]
        count = r.message_count("/lidar/points")
        assert 3 <= count < n
        got = list(r.messages(on_error="skip"))
    assert len(got) == count
    assert r.stats.storage_errors
    for i, m in enumerate(got):  # an intact prefix
        assert m.log_time_ns == T0 + i * STEP
        np.testing.assert_array_equal(read_cloud(m.msg)["x"], scan["x"][: 20_000 + 1000 * i])


def test_raw_buffers_are_copied_unless_immutable(tmp_path: Path) -> None:
    """A caller may reuse a buffer after write_raw; a typed (non-byte) memoryview counts all its bytes."""
    bag = tmp_path / "bag"
    ref = BagWriter(tmp_path / "x").typestore
    cloud = make_pointcloud2(ref, small_cloud(0, 20_000), T0, "l")  # 320 KB: above the inline limit
    raw = bytearray(ref.serialize_cdr(cloud, PC2))
    original = bytes(raw)
    padded = original + bytes(-len(original) % 4)  # CDR allows up to 3 bytes of padding at the end
    floats = np.frombuffer(padded, np.float32).copy()
    with BagWriter(bag) as w:
        w.add_topic("/lidar/points", PC2)
        w.write_raw("/lidar/points", T0, memoryview(raw))
        raw[4:] = bytes(len(raw) - 4)  # reused by the caller at once
        w.write_raw("/lidar/points", T0 + 1, floats.data)
        w.write_raw("/lidar/points", T0 + 2, memoryview(original))
        w.write_raw("/lidar/points", T0 + 3, np.frombuffer(original, np.uint8).reshape(1, -1).data)
    with BagReader(bag) as r:
        got = list(r.messages())
    assert len(got) == 4 and not r.stats.n_skipped
    for m in got:
        np.testing.assert_array_equal(read_cloud(m.msg)["x"], small_cloud(0, 20_000)["x"])


def test_compression_level_and_chunk_size(tmp_path: Path, scan: dict[str, np.ndarray]) -> None:
    sizes = {}
    for level in (1, 19):
        bag = tmp_path / f"l{level}"
        with BagWriter(bag, compression_level=level, chunk_size=256 * 1024) as w:
            w.add_topic("/lidar/points", PC2)
            for i in range(2):
                w.write("/lidar/points", T0 + i, make_pointcloud2(w.typestore, scan, T0 + i, "l"))
        sizes[level] = (bag / f"l{level}.mcap").stat().st_size
        with BagReader(bag) as r:
            (m, _) = list(r.messages())
        np.testing.assert_array_equal(read_cloud(m.msg)["intensity"], scan["intensity"])
        summary = _mcap_summary(bag / f"l{level}.mcap")
        assert len(summary.chunk_indexes) == 2  # each scan alone exceeds 256 KiB: one chunk each
        assert all(ci.compression == "zstd" for ci in summary.chunk_indexes)
    assert sizes[19] < sizes[1] < 2 * 16 * len(scan["x"])
    with pytest.raises(BagWriteError, match="compression_level"):
        BagWriter(tmp_path / "bad", compression_level=99)
    with pytest.raises(BagWriteError, match="chunk_size"):
        BagWriter(tmp_path / "bad", chunk_size=0)


def test_abort_leaves_nothing(tmp_path: Path, scan: dict[str, np.ndarray]) -> None:
    bag = tmp_path / "bag"
    with pytest.raises(RuntimeError, match="stop"), BagWriter(bag) as w:
        w.add_topic("/lidar/points", PC2)
        for i in range(3):
            w.write("/lidar/points", T0 + i, make_pointcloud2(w.typestore, scan, T0 + i, "l"))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with BagWriter(bag) as w:  # the name is free again; an empty bag is a valid bag
        w.add_topic("/tf_static", TF, latched=True)
    with BagReader(bag) as r:
        assert r.message_count() == 0 and r.topics == {"/tf_static": TF}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_gathered_write_keeps_order_beyond_iov_max(tmp_path: Path) -> None:
    """More buffers than one writev call takes, of mixed kinds and sizes, land in order."""
    from lidar_ssl_core.bag.mcap_writer import _writev

    rng = np.random.default_rng(3)
    parts: list[bytes | bytearray | memoryview] = []
    for i in range(1500):
        chunk = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        parts.append(chunk if i % 3 == 0 else bytearray(chunk) if i % 3 == 1 else memoryview(chunk))
    path = tmp_path / "out.bin"
    with path.open("wb", buffering=0) as f:
        assert _writev(f.fileno(), parts) == sum(len(p) for p in parts)
    assert path.read_bytes() == b"".join(parts)


@pytest.mark.parametrize("distro", ["humble", "kilted"])
def test_spliced_serialization_equals_serialize_cdr(
    tmp_path: Path, scan: dict[str, np.ndarray], png: bytes, distro: Any
) -> None:
    from lidar_ssl_core.bag.mcap_writer import serialize_parts

    ts = BagWriter(tmp_path / "x", distro=distro).typestore
    image = ts.types["sensor_msgs/msg/Image"](
        header=make_camera_info(ts, CameraIntrinsics(K=K, width=4, height=3, frame_id="c"), T0).header,
        height=300,
        width=400,
        encoding="rgb8",
        is_bigendian=0,
        step=1200,
        data=np.arange(360_000, dtype=np.uint8),
    )
    cases = [
        (make_pointcloud2(ts, scan, T0, "lidar_top"), PC2, 3),
        (compressed_from_bytes(ts, png, T0, "image_2"), JPEG, 3),
        (image, "sensor_msgs/msg/Image", 3),
        (make_pointcloud2(ts, small_cloud(1, 100), T0, "l"), PC2, 1),  # small: one buffer
        (make_tf_message(ts, []), TF, 1),
    ]
    for msg, msgtype, n_parts in cases:
        parts = serialize_parts(ts, msg, msgtype)
        assert len(parts) == n_parts
        assert b"".join(parts) == bytes(ts.serialize_cdr(msg, msgtype))
    cloud = make_pointcloud2(ts, scan, T0, "lidar_top")
    view = serialize_parts(ts, cloud, PC2)[1]
    assert isinstance(view, memoryview) and view.obj is cloud.data  # referenced, not copied


def test_message_arrays_reused_after_write_are_not_seen(tmp_path: Path, scan: dict[str, np.ndarray]) -> None:
    """A cloud that leaves the chunk open is copied; one that closes it is on disk before write returns."""
    bag = tmp_path / "bag"
    sizes = [10_000, 90_000, 10_000, 5_000]  # 160 KB, 1.4 MB (closes the chunk), 160 KB, 80 KB
    with BagWriter(bag) as w:
        w.add_topic("/lidar/points", PC2)
        for i, n in enumerate(sizes):
            cloud = make_pointcloud2(w.typestore, {k: v[:n] for k, v in scan.items()}, T0 + i, "l")
            cloud = dataclasses.replace(cloud, data=cloud.data.copy())  # a writable buffer
            w.write("/lidar/points", T0 + i, cloud)
            cloud.data[:] = 0  # the producer reuses its buffer
    with BagReader(bag) as r:
        got = list(r.messages())
    assert len(got) == len(sizes)
    for m, n in zip(got, sizes, strict=True):
        np.testing.assert_array_equal(read_cloud(m.msg)["x"], scan["x"][:n])
