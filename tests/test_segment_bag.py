"""write_segmented_bag: exact copy of the input plus a coloured segmentation topic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader

from lidar_ssl_core.bag import BagReader, BagWriter, default_read_typestore
from lidar_ssl_core.downstream.classes import IGNORE_INDEX, SYNTHETIC
from lidar_ssl_core.downstream.segment_bag import (
    label_passthrough,
    pack_rgb,
    unpack_rgb,
    write_segmented_bag,
)
from lidar_ssl_core.errors import BagReadError, BagWriteError, ConfigError
from lidar_ssl_core.msg import make_pointcloud2, make_tf_message, read_cloud, stamp_to_ns
from lidar_ssl_core.resources import default_bag
from lidar_ssl_core.types import PointCloud, StampedTransform

SEG = "/lidar/segmentation"
PC2 = "sensor_msgs/msg/PointCloud2"
FLOAT32, UINT16 = 7, 4


def _raw_messages(path: Path) -> list[tuple[str, int, bytes]]:
    with AnyReader([path], default_typestore=default_read_typestore()) as r:
        return [(c.topic, t, bytes(raw)) for c, t, raw in r.messages()]


def _qos_durability(path: Path) -> dict[str, str]:
    info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    out = {}
    for t in info["topics_with_message_count"]:
        qos = t["topic_metadata"]["offered_qos_profiles"]
        qos = yaml.safe_load(qos) if isinstance(qos, str) else qos
        out[t["topic_metadata"]["name"]] = str(qos[0]["durability"])
    return out


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("seg") / "segmented"
    report = write_segmented_bag(default_bag(), out, label_passthrough(SYNTHETIC), SYNTHETIC)
    return out, report


def test_copy_is_exact_and_complete(segmented: tuple[Path, object]) -> None:
    out, report = segmented
    src = default_bag()
    original, copied = _raw_messages(src), _raw_messages(out)
    assert [m for m in copied if m[0] != SEG] == original  # same topics, order, log times and bytes
    with BagReader(src) as a, BagReader(out) as b:
        assert set(b.topics) == {*a.topics, SEG} and b.topics[SEG] == PC2
        assert {t: b.message_count(t) for t in a.topics} == {t: a.message_count(t) for t in a.topics}
        assert b.message_count(SEG) == a.message_count("/lidar/points") == 16
    durability = _qos_durability(out)
    assert durability["/tf_static"] in ("transient_local", "1")
    assert durability["/tf"] in ("volatile", "2")
    assert report.sweeps_written == 16 and report.n_skipped == 0  # type: ignore[attr-defined]
    assert report.messages_copied == len(original)  # type: ignore[attr-defined]


def test_segmentation_labels_and_colours_read_back(segmented: tuple[Path, object]) -> None:
    out, report = segmented
    with BagReader(out) as r:
        sweeps = {m.log_time_ns: m.msg for m in r.messages(["/lidar/points"])}
        segs = list(r.messages([SEG]))
    total = 0
    for m in segs:
        src = sweeps[m.log_time_ns]
        seg = m.msg
        assert stamp_to_ns(seg.header.stamp) == stamp_to_ns(src.header.stamp)
        assert seg.header.frame_id == src.header.frame_id == "lidar_top"
        assert {f.name: f.offset for f in seg.fields} == {
            "x": 0,
            "y": 4,
            "z": 8,
            "intensity": 12,
            "rgb": 16,
            "label": 20,
        }  # every field aligned to its size (deploy.cloud layout); no score from a label predictor
        assert seg.point_step == 24
        fields = {f.name: f.datatype for f in seg.fields}
        assert fields == {
            "x": FLOAT32,
            "y": FLOAT32,
            "z": FLOAT32,
            "intensity": FLOAT32,
            "label": UINT16,
            "rgb": FLOAT32,
        }
        a, b = read_cloud(src), read_cloud(seg)
        for c in ("x", "y", "z", "intensity"):
            np.testing.assert_array_equal(a[c], b[c])
        expected = SYNTHETIC.remap(a["label"])
        np.testing.assert_array_equal(b["label"], expected)
        np.testing.assert_array_equal(unpack_rgb(b["rgb"]), SYNTHETIC.colors[expected])
        total += len(b)
    assert total == report.points_written == report.points_labelled  # type: ignore[attr-defined]


def test_pack_rgb_is_pcl_layout() -> None:
    rgb = np.array([[255, 0, 0], [1, 2, 3]], np.uint8)
    packed = pack_rgb(rgb)
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0xFF0000, 0x010203]
    np.testing.assert_array_equal(unpack_rgb(packed), rgb)


def _small_bag(path: Path) -> None:
    """Three sweeps: NaN points, undeserializable bytes, a cloud without x; then a good one."""
    t0 = 1_700_000_000_000_000_000
    xyz = np.array([[1, 0, 0], [np.nan, 0, 0], [-1, 2, 0], [3, np.inf, 1], [-2, -2, 0]], np.float32)
    with BagWriter(path, storage="sqlite3") as w:
        ts = w.typestore
        w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        w.add_topic("/lidar/points", PC2)
        w.write(
            "/tf_static", t0, make_tf_message(ts, [StampedTransform("base_link", "lidar_top", t0, np.eye(4))])
        )
        cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "intensity": np.arange(5, dtype=np.float32)}
        w.write("/lidar/points", t0 + 1, make_pointcloud2(ts, cols, t0 + 1, "lidar_top"))
        w.write_raw("/lidar/points", t0 + 2, b"\x00\x01\x00\x00garbage")
        w.write("/lidar/points", t0 + 3, make_pointcloud2(ts, {"y": xyz[:, 1]}, t0 + 3, "lidar_top"))
        w.write("/lidar/points", t0 + 4, make_pointcloud2(ts, cols, t0 + 4, "lidar_top"))


def _by_sign(cloud: PointCloud) -> np.ndarray:
    assert np.isfinite(cloud.xyz).all(), "the predictor must only see finite points"
    return (cloud.xyz[:, 0] > 0).astype(np.int64)


def test_bad_sweeps_are_skipped_and_nonfinite_points_keep_their_place(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _small_bag(src)
    report = write_segmented_bag(src, out, _by_sign, SYNTHETIC)
    assert report.sweeps_written == 2 and report.n_skipped == 2
    assert report.messages_copied == 5 and report.points_written == 10 and report.points_nonfinite == 4
    assert any("deserialize" in k for k in report.skipped)
    assert any("MalformedMessageError" in k and "'x'" in k for k in report.skipped)
    assert (out / "metadata.yaml").read_text().count("sqlite3") >= 1  # storage follows the input
    with BagReader(out) as r:
        segs = [m.msg for m in r.messages([SEG])]
        assert r.message_count("/lidar/points") == 4  # the undecodable message is copied too
    assert len(_raw_messages(out)) == 5 + 2
    for seg in segs:
        pts = read_cloud(seg)
        assert len(pts) == 5 and not seg.is_dense
        assert pts["label"].tolist() == [1, IGNORE_INDEX, 0, IGNORE_INDEX, 0]
        assert np.isnan(pts["x"][1]) and np.isinf(pts["y"][3])
        np.testing.assert_array_equal(unpack_rgb(pts["rgb"])[1], [0, 0, 0])


def test_errors_and_atomic_output(tmp_path: Path, segmented: tuple[Path, object]) -> None:
    out, _ = segmented
    with pytest.raises(BagWriteError, match="exists"):
        write_segmented_bag(default_bag(), out, label_passthrough(SYNTHETIC), SYNTHETIC)
    with pytest.raises(ConfigError, match="/lidar/points"):
        write_segmented_bag(default_bag(), tmp_path / "x", _by_sign, SYNTHETIC, topic_in="/velodyne")
    with pytest.raises(ConfigError, match="already has a topic"):
        write_segmented_bag(out, tmp_path / "y", _by_sign, SYNTHETIC)

    def broken(cloud: PointCloud) -> np.ndarray:
        return np.full(len(cloud), 42)

    with pytest.raises(ValueError, match="returned id 42"):
        write_segmented_bag(default_bag(), tmp_path / "z", broken, SYNTHETIC)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left behind


def test_a_damaged_bag_is_one_clear_refusal_and_writes_nothing(tmp_path: Path) -> None:
    """segment copies whole bags: a truncated one is refused with a pointer to `lidar-ssl info`."""
    src = tmp_path / "cut"
    src.mkdir()
    for p in default_bag().iterdir():
        data = p.read_bytes()
        (src / p.name).write_bytes(data[: 2 * len(data) // 3] if p.suffix == ".mcap" else data)
    with pytest.raises(BagReadError, match=r"damaged bag cannot be segmented.*lidar-ssl info"):
        write_segmented_bag(src, tmp_path / "out", label_passthrough(SYNTHETIC), SYNTHETIC)
    assert not (tmp_path / "out").exists()
