"""PointCloud2 <-> numpy: layouts, endianness, padding, organized clouds, NaNs, rclpy stand-ins, errors."""

from __future__ import annotations

import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from lidar_ssl_core.errors import MalformedMessageError, UnsupportedEncodingError
from lidar_ssl_core.msg.pointcloud2 import (
    FieldSpec,
    cloud_to_pointcloud,
    cloud_to_pointcloud_counted,
    encode_cloud,
    make_pointcloud2,
    pointcloud2_header_and_fields,
    read_cloud,
)

TS = get_typestore(Stores.ROS2_HUMBLE)
PC2 = "sensor_msgs/msg/PointCloud2"
STAMP = 1_532_402_927_647_951_000


def roundtrip(msg: Any) -> Any:
    """Serialize and deserialize with rosbags, as a bag reader hands messages over."""
    return TS.deserialize_cdr(TS.serialize_cdr(msg, PC2), PC2)


def rclpy_like(msg: Any, data_kind: str = "array") -> SimpleNamespace:
    """A stand-in with rclpy's attribute names and container types (array.array('B') data)."""
    raw = bytes(np.asarray(msg.data, dtype=np.uint8).tobytes())
    data: Any = {"array": array.array("B", raw), "bytes": raw, "list": list(raw)}[data_kind]
    return SimpleNamespace(
        header=SimpleNamespace(
            stamp=SimpleNamespace(sec=msg.header.stamp.sec, nanosec=msg.header.stamp.nanosec),
            frame_id=msg.header.frame_id,
        ),
        height=msg.height,
        width=msg.width,
        fields=[
            SimpleNamespace(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
            for f in msg.fields
        ],
        is_bigendian=msg.is_bigendian,
        point_step=msg.point_step,
        row_step=msg.row_step,
        data=data,
        is_dense=msg.is_dense,
    )


def all_types_columns(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cols: dict[str, np.ndarray] = {}
    for code in ("i1", "u1", "i2", "u2", "i4", "u4"):
        info = np.iinfo(np.dtype(code))
        vals = rng.integers(info.min, info.max, size=n, endpoint=True, dtype=np.int64)
        vals[:2] = [info.min, info.max]
        cols[f"c_{code}"] = vals.astype(code)
    cols["x"] = rng.normal(size=n).astype(np.float32)
    cols["y"] = rng.normal(size=n).astype(np.float32)
    cols["z"] = rng.normal(size=n).astype(np.float32)
    cols["c_f8"] = rng.normal(size=n) * 1e200
    cols["normal"] = rng.normal(size=(n, 3)).astype(np.float32)  # count 3 -> subarray field
    return cols


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("point_step", [None, 80])
def test_every_datatype_round_trips(big_endian: bool, point_step: int | None) -> None:
    cols = all_types_columns(257)
    msg = roundtrip(
        make_pointcloud2(TS, cols, STAMP, "lidar_top", big_endian=big_endian, point_step=point_step)
    )
    assert sorted({f.datatype for f in msg.fields}) == list(range(1, 9))
    assert msg.point_step == (point_step or 1 + 1 + 2 + 2 + 4 + 4 + 12 + 8 + 12)
    before = bytes(msg.data)
    pts = read_cloud(msg)
    assert pts.shape == (257,)
    assert not pts.flags.writeable
    if big_endian:
        assert pts.dtype["x"].byteorder == ">"
    for name, values in cols.items():
        np.testing.assert_array_equal(pts[name], values, err_msg=name)
    assert pts["normal"].shape == (257, 3)
    native = read_cloud(msg, native=True)
    assert native.dtype.isnative
    for name, values in cols.items():
        np.testing.assert_array_equal(native[name], values, err_msg=name)
    assert bytes(msg.data) == before  # the message buffer was not byte-swapped in place


def test_count_field_is_one_subarray_column() -> None:
    enc = encode_cloud({"x": np.zeros(2, np.float32), "rgb": np.arange(6, dtype=np.uint8).reshape(2, 3)})
    assert enc.fields == [FieldSpec("x", 0, 7, 1), FieldSpec("rgb", 4, 2, 3)]
    assert enc.point_step == 7
    assert len(enc.data) == 14


def test_read_is_zero_copy_for_rosbags_messages() -> None:
    msg = roundtrip(make_pointcloud2(TS, all_types_columns(10), STAMP, "lidar_top"))
    pts = read_cloud(msg)
    assert np.shares_memory(pts, msg.data)


@pytest.mark.parametrize("data_kind", ["array", "bytes", "list"])
def test_rclpy_stand_in_reads_like_rosbags(data_kind: str) -> None:
    cols = all_types_columns(50)
    cols["intensity"] = np.linspace(0, 1, 50, dtype=np.float32)
    msg = roundtrip(make_pointcloud2(TS, cols, STAMP, "/lidar_top"))
    fake = rclpy_like(msg, data_kind)
    a, b = read_cloud(msg), read_cloud(fake)
    assert a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()
    cloud = cloud_to_pointcloud(fake)
    assert cloud.frame_id == "lidar_top"
    assert cloud.stamp_ns == STAMP
    np.testing.assert_array_equal(cloud.intensity, cols["intensity"])


def test_real_rclpy_message_if_installed() -> None:
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    cols = {k: np.arange(5, dtype=np.float32) * i for i, k in enumerate("xyz", 1)}
    ref = make_pointcloud2(TS, cols, STAMP, "lidar_top")
    msg = sensor_msgs.PointCloud2()
    msg.header.frame_id = "lidar_top"
    msg.header.stamp.sec, msg.header.stamp.nanosec = ref.header.stamp.sec, ref.header.stamp.nanosec
    msg.height, msg.width, msg.point_step, msg.row_step = 1, 5, ref.point_step, ref.row_step
    msg.fields = [
        sensor_msgs.PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
        for f in ref.fields
    ]
    msg.data = array.array("B", bytes(ref.data))
    cloud = cloud_to_pointcloud(msg)
    np.testing.assert_array_equal(cloud.xyz, np.stack([cols["x"], cols["y"], cols["z"]], axis=1))
    assert cloud.stamp_ns == STAMP


def test_organized_cloud_is_height_by_width() -> None:
    h, w = 4, 6
    x = np.arange(h * w, dtype=np.float32).reshape(h, w)
    cols = {"x": x, "y": -x, "z": x * 2}
    msg = roundtrip(make_pointcloud2(TS, cols, STAMP, "lidar_top", shape=(h, w)))
    assert (msg.height, msg.width) == (h, w)
    pts = read_cloud(msg)
    assert pts.shape == (h, w)
    np.testing.assert_array_equal(pts["x"], x)
    assert read_cloud(msg, reshape_organized=False).shape == (h * w,)


def with_row_padding(msg: Any, pad: int) -> SimpleNamespace:
    """Copy of a cloud whose rows are followed by ``pad`` garbage bytes (row_step > width*point_step)."""
    fake = rclpy_like(msg, "bytes")
    rows = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width * msg.point_step)
    padded = np.concatenate([rows, np.full((msg.height, pad), 0xEE, np.uint8)], axis=1)
    fake.data = padded.tobytes()
    fake.row_step = msg.width * msg.point_step + pad
    return fake


def test_row_step_padding_is_skipped() -> None:
    h, w = 3, 5
    x = np.arange(h * w, dtype=np.float32).reshape(h, w)
    msg = make_pointcloud2(TS, {"x": x, "y": x + 100, "z": x + 200}, STAMP, "lidar_top", shape=(h, w))
    fake = with_row_padding(msg, 7)
    pts = read_cloud(fake)
    assert pts.shape == (h, w)
    np.testing.assert_array_equal(pts["y"], x + 100)
    flat = read_cloud(fake, reshape_organized=False)
    np.testing.assert_array_equal(flat["z"], (x + 200).reshape(-1))
    assert len(cloud_to_pointcloud(fake)) == h * w


def test_nonfinite_points_are_dropped_and_counted() -> None:
    n = 10
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    z = np.ones(n, np.float32)
    x[2], y[5], z[7] = np.nan, np.inf, -np.inf
    label = np.arange(n, dtype=np.uint16) + 100
    msg = roundtrip(
        make_pointcloud2(TS, {"x": x, "y": y, "z": z, "i": x * 0 + 3, "label": label}, STAMP, "l")
    )
    assert msg.is_dense is False
    result = cloud_to_pointcloud_counted(msg)
    assert result.n_nonfinite == 3
    keep = np.array([i not in (2, 5, 7) for i in range(n)])
    np.testing.assert_array_equal(result.cloud.xyz[:, 0], x[keep])
    np.testing.assert_array_equal(result.cloud.label, label[keep].astype(np.int64))
    np.testing.assert_array_equal(result.cloud.intensity, np.full(7, 3, np.float32))
    kept_all = cloud_to_pointcloud_counted(msg, drop_nonfinite=False)
    assert len(kept_all.cloud) == n
    assert kept_all.n_nonfinite == 0


@pytest.mark.parametrize("alias", ["intensity", "i", "reflectance"])
def test_intensity_aliases_ring_and_label(alias: str) -> None:
    n = 5
    cols: dict[str, np.ndarray] = {
        "x": np.ones(n, np.float64),  # any numeric type is converted to float32
        "y": np.zeros(n, np.int16),
        "z": np.full(n, 2, np.float32),
        alias: np.arange(n, dtype=np.uint8),
        "ring": np.arange(n, dtype=np.uint16),
        "sem": np.arange(n, dtype=np.int32) * 2,
    }
    cloud = cloud_to_pointcloud(roundtrip(make_pointcloud2(TS, cols, STAMP, "lidar_top")), label_field="sem")
    assert cloud.xyz.dtype == np.float32
    np.testing.assert_array_equal(cloud.xyz[0], [1.0, 0.0, 2.0])
    np.testing.assert_array_equal(cloud.intensity, np.arange(n, dtype=np.float32))
    np.testing.assert_array_equal(cloud.ring, np.arange(n))
    np.testing.assert_array_equal(cloud.label, np.arange(n) * 2)


def test_missing_intensity_gives_zeros_and_no_label() -> None:
    cols = {c: np.ones(3, np.float32) for c in "xyz"}
    cloud = cloud_to_pointcloud(make_pointcloud2(TS, cols, STAMP, "lidar_top"))
    np.testing.assert_array_equal(cloud.intensity, np.zeros(3, np.float32))
    assert cloud.ring is None
    assert cloud.label is None


def test_empty_clouds_are_valid() -> None:
    cols = {c: np.zeros(0, np.float32) for c in "xyz"}
    msg = roundtrip(make_pointcloud2(TS, cols, STAMP, "lidar_top"))
    assert read_cloud(msg).shape == (0,)
    cloud = cloud_to_pointcloud(msg)
    assert len(cloud) == 0
    assert cloud.xyz.shape == (0, 3)
    bare = TS.types[PC2](
        header=msg.header,
        height=0,
        width=0,
        fields=[],
        is_bigendian=False,
        point_step=0,
        row_step=0,
        data=np.zeros(0, np.uint8),
        is_dense=True,
    )
    assert len(cloud_to_pointcloud(roundtrip(bare))) == 0


def field(name: str, offset: int, datatype: int = 7, count: int = 1) -> SimpleNamespace:
    return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


def broken_cloud(**overrides: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "header": SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=0), frame_id="lidar_top"),
        "height": 1,
        "width": 4,
        "fields": [field("x", 0), field("y", 4), field("z", 8)],
        "is_bigendian": False,
        "point_step": 12,
        "row_step": 48,
        "data": bytes(48),
        "is_dense": True,
    }
    base.update(overrides)
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        (
            {"point_step": 8, "row_step": 32, "data": bytes(32)},
            MalformedMessageError,
            ["'z'", "point_step 8"],
        ),
        ({"data": bytes(47)}, MalformedMessageError, ["47 bytes", "row_step 48"]),
        ({"data": bytes(96)}, MalformedMessageError, ["96 bytes"]),
        ({"row_step": 40, "data": bytes(40)}, MalformedMessageError, ["row_step 40", "point_step 12"]),
        (
            {"fields": [field("x", 0), field("y", 4), field("z", 12)]},
            MalformedMessageError,
            ["'z'", "offset 12"],
        ),
        (
            {"fields": [field("x", 0), field("y", 2), field("z", 8)]},
            MalformedMessageError,
            ["'x'", "'y'", "overlap"],
        ),
        ({"fields": [field("x", 0), field("x", 4), field("z", 8)]}, MalformedMessageError, ["'x'", "twice"]),
        (
            {"fields": [field("x", 0), field("y", 4), field("z", 8, datatype=9)]},
            UnsupportedEncodingError,
            ["'z'", "9"],
        ),
        ({"fields": [field("x", 0), field("y", 4), field("q", 8)]}, MalformedMessageError, ["'z'"]),
    ],
    ids=[
        "point_step",
        "short_data",
        "long_data",
        "row_step",
        "offset",
        "overlap",
        "duplicate",
        "datatype",
        "no_z",
    ],
)
def test_malformed_clouds_raise_typed_errors_naming_the_problem(
    overrides: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as info:
        cloud_to_pointcloud(broken_cloud(**overrides))
    for word in words:
        assert word in str(info.value)


def test_encode_rejects_int64_columns() -> None:
    with pytest.raises(UnsupportedEncodingError, match="'label'"):
        encode_cloud({"x": np.zeros(2, np.float32), "label": np.zeros(2, np.int64)})


def test_nuscenes_sweep_round_trip_and_zero_copy_view(nuscenes_root: Path) -> None:
    path = next((nuscenes_root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    assert raw.shape[0] == 34_688
    cols: dict[str, np.ndarray] = {
        "x": raw[:, 0],
        "y": raw[:, 1],
        "z": raw[:, 2],
        "intensity": raw[:, 3],
        "ring": raw[:, 4].astype(np.uint16),
    }
    msg = roundtrip(make_pointcloud2(TS, cols, STAMP, "lidar_top"))
    cloud = cloud_to_pointcloud(msg)
    np.testing.assert_array_equal(cloud.xyz, raw[:, :3])
    np.testing.assert_array_equal(cloud.ring, raw[:, 4].astype(np.uint16))
    view = read_cloud(msg)  # a view of the message buffer, no copy (speed: benchmarks/bench_hot_paths.py)
    assert np.shares_memory(view, msg.data) and not view.flags.writeable


# ------------------------------------------------------------------- serialized prefix (no deserialization)
def pc2_message(fields: list[tuple[str, int, int, int]], frame_id: str, stamp_ns: int, n: int = 7) -> Any:
    """A PointCloud2 of the rosbags typestore with exactly these (name, offset, datatype, count) fields."""
    field_cls = TS.types["sensor_msgs/msg/PointField"]
    step = max((off + 8 * cnt for _, off, _, cnt in fields), default=0)
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    header = TS.types["std_msgs/msg/Header"](
        stamp=TS.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
    )
    return TS.types[PC2](
        header=header,
        height=1,
        width=n,
        fields=[field_cls(name=a, offset=b, datatype=c, count=d) for a, b, c, d in fields],
        is_bigendian=False,
        point_step=step,
        row_step=step * n,
        data=np.arange(step * n, dtype=np.uint64).astype(np.uint8),
        is_dense=True,
    )


PREFIX_LAYOUTS = {
    "profile": ([("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1)], "lidar_top"),
    "label": ([("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("ring", 12, 4, 1), ("label", 14, 4, 1)], "l"),
    "no_fields": ([], "lidar_top"),
    "empty_names": ([("", 0, 2, 1), ("a", 1, 8, 3), ("", 25, 1, 0)], ""),
    "long_frame": ([("xyz", 0, 7, 3)], "frame_" + "é" * 300 + "x" * 1001),
    "odd_lengths": ([("ab", 0, 1, 1), ("abc", 1, 1, 1), ("abcd", 2, 1, 1), ("abcde", 3, 1, 1)], "abc"),
}


@pytest.mark.parametrize("little_endian", [True, False], ids=["le", "be"])
@pytest.mark.parametrize("layout", sorted(PREFIX_LAYOUTS))
@pytest.mark.parametrize("stamp_ns", [0, STAMP, 2**31 * 1_000_000_000 - 1, -1_500_000_000])
def test_header_and_fields_equal_full_deserialization(
    layout: str, little_endian: bool, stamp_ns: int
) -> None:
    fields, frame = PREFIX_LAYOUTS[layout]
    msg = pc2_message(fields, frame, stamp_ns)
    raw = TS.serialize_cdr(msg, PC2, little_endian=little_endian)
    full: Any = TS.deserialize_cdr(raw, PC2)
    head = pointcloud2_header_and_fields(raw)
    assert tuple(head) == (
        full.header.stamp.sec * 1_000_000_000 + full.header.stamp.nanosec,
        full.header.frame_id,
        tuple(f.name for f in full.fields),
    )
    assert head.stamp_ns == stamp_ns and head.frame_id == frame
    assert head.field_names == tuple(f[0] for f in fields)
    assert pointcloud2_header_and_fields(bytes(raw)) == head  # bytes and memoryview alike


def test_header_and_fields_of_profile_clouds_in_a_bag(tmp_path: Path) -> None:
    """Clouds written by BagWriter and read back raw: the label field is found without decoding data."""
    from lidar_ssl_core.bag import BagWriter, open_bag

    rng = np.random.default_rng(0)
    with BagWriter(tmp_path / "b") as w:
        w.add_topic("/lidar/points", PC2)
        for i in range(4):
            cols = {c: rng.normal(size=300).astype(np.float32) for c in ("x", "y", "z", "intensity")}
            if i % 2:
                cols["label"] = rng.integers(0, 9, 300).astype(np.uint16)
            w.write("/lidar/points", STAMP + i, make_pointcloud2(w.typestore, cols, STAMP + i, "lidar_top"))
    with open_bag(tmp_path / "b") as r:
        heads = [pointcloud2_header_and_fields(m.raw) for m in r.raw_messages(["/lidar/points"])]
    assert [h.stamp_ns for h in heads] == [STAMP + i for i in range(4)]
    assert ["label" in h.field_names for h in heads] == [False, True, False, True]
    assert {h.frame_id for h in heads} == {"lidar_top"}


def _garbled() -> dict[str, bytes]:
    good = bytes(TS.serialize_cdr(pc2_message(PREFIX_LAYOUTS["label"][0], "lidar_top", STAMP), PC2))
    n_fields_at = 4 + 8 + 4 + len("lidar_top") + 1  # encapsulation, stamp, frame_id length + bytes
    n_fields_at = (n_fields_at + 3) // 4 * 4 + 8
    huge = bytearray(good)
    huge[n_fields_at : n_fields_at + 4] = (10**6).to_bytes(4, "little")
    no_nul = bytearray(good)
    no_nul[12 + 4 + len("lidar_top")] = ord("x")
    bad_utf8 = bytearray(good)
    bad_utf8[16] = 0xFF
    bad_nsec = bytearray(good)
    bad_nsec[8:12] = (2_000_000_000).to_bytes(4, "little")
    long_frame = bytearray(good)
    long_frame[12:16] = (len(good)).to_bytes(4, "little")
    return {
        "empty": b"",
        "encapsulation_only": good[:4],
        "cut_in_stamp": good[:10],
        "cut_in_frame_id": good[:18],
        "cut_before_fields": good[: n_fields_at + 2],
        "cut_in_fields": good[: n_fields_at + 30],
        "xcdr2": b"\x00\x07" + good[2:],
        "not_cdr": b"\x89PNG\r\n\x1a\n" + good[8:],
        "random": np.random.default_rng(3).integers(0, 256, 200, dtype=np.uint8).tobytes(),
        "huge_field_count": bytes(huge),
        "frame_id_without_nul": bytes(no_nul),
        "frame_id_not_utf8": bytes(bad_utf8),
        "nanosec_out_of_range": bytes(bad_nsec),
        "frame_id_past_end": bytes(long_frame),
    }


@pytest.mark.parametrize("case", sorted(_garbled()))
def test_header_and_fields_garbage_raises(case: str) -> None:
    with pytest.raises(MalformedMessageError, match="PointCloud2 CDR"):
        pointcloud2_header_and_fields(_garbled()[case])


def test_header_and_fields_of_a_full_size_profile_cloud() -> None:
    """A ~35k-point profile cloud (x y z intensity ring label); its speed against a full deserialization is
    a benchmark figure (benchmarks/bench_hot_paths.py), not asserted here."""
    n = 34_720
    rng = np.random.default_rng(1)
    cols = {c: rng.normal(size=n).astype(np.float32) for c in ("x", "y", "z", "intensity")}
    cols["ring"] = (np.arange(n) % 32).astype(np.uint16)
    cols["label"] = rng.integers(0, 31, n).astype(np.uint16)
    raw = bytes(TS.serialize_cdr(make_pointcloud2(TS, cols, STAMP, "lidar_top"), PC2))
    header = pointcloud2_header_and_fields(raw)
    assert header.field_names == ("x", "y", "z", "intensity", "ring", "label")
    assert (header.stamp_ns, header.frame_id) == (STAMP, "lidar_top")
