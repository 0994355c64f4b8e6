"""Defects found by the fuzz campaign (issue 13): each bad input gets a typed error, and one bad message
costs one sweep or one camera view, never a whole frame or a long job."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from lidar_ssl_core.bag import BagReader, BagWriter
from lidar_ssl_core.config import DataConfig, load_config
from lidar_ssl_core.data.bag_index import index_bag
from lidar_ssl_core.data.frames import FrameLoader
from lidar_ssl_core.downstream.classes import SYNTHETIC
from lidar_ssl_core.downstream.data import LabelledSweepDataset, SkippedSweep, index_labelled_sweeps
from lidar_ssl_core.downstream.segment_bag import label_passthrough, write_segmented_bag
from lidar_ssl_core.errors import LidarSslError, MalformedMessageError, MessageError
from lidar_ssl_core.msg import (
    camera_info_to_intrinsics,
    cloud_to_pointcloud,
    compressed_image_size,
    compressed_to_rgb,
    image_to_rgb,
    make_pointcloud2,
    read_cloud,
    stamp_to_ns,
    tf_message_to_transforms,
)
from lidar_ssl_core.resources import default_bag

NS = SimpleNamespace
HEADER = NS(stamp=NS(sec=1, nanosec=2), frame_id="lidar")


def png_claiming(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A well-formed PNG (valid CRCs) whose IHDR claims ``width`` x ``height`` but holds only ``rows``
    (compressed; default: 4 short rows)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if rows is None:
        rows = b"".join(b"\0" + bytes(3 * min(width, 64)) for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def spy_imdecode(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record every cv2.imdecode call (sizes of the buffers decoded)."""
    calls: list[int] = []
    real = cv2.imdecode

    def imdecode(buf: Any, flags: int) -> Any:
        calls.append(len(buf))
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    return calls


def compressed(data: bytes, fmt: str = "png") -> Any:
    return NS(header=HEADER, format=fmt, data=np.frombuffer(data, np.uint8))


def cloud_msg(**over: Any) -> Any:
    fields = [NS(name=c, offset=4 * i, datatype=7, count=1) for i, c in enumerate("xyz")]
    base = dict(
        header=HEADER,
        height=1,
        width=2,
        fields=fields,
        is_bigendian=False,
        point_step=12,
        row_step=24,
        data=np.zeros(24, np.uint8),
        is_dense=True,
    )
    return NS(**{**base, **over})


# ------------------------------------------------------------------------ 1. steps beyond int32


@pytest.mark.parametrize(
    "over",
    [
        {"point_step": 2**31, "row_step": 2**31, "width": 1, "data": np.zeros(16, np.uint8)},
        {"point_step": 2**32 - 1, "row_step": 2**32 - 1, "width": 1},
        {"point_step": 2**31, "row_step": 2**31, "width": 0},  # an empty cloud with such a layout
        {"row_step": 2**31},
    ],
)
def test_steps_of_2_pow_31_and_more_are_malformed_message_errors(over: dict[str, Any]) -> None:
    with pytest.raises(MalformedMessageError):
        read_cloud(cloud_msg(**over))


@pytest.fixture()
def bag_with_a_huge_point_step(tmp_path: Path) -> Path:
    """Three labelled sweeps; the middle one has point_step 2^31 (legal uint32, unreadable)."""
    path = tmp_path / "huge_step"
    rng = np.random.default_rng(0)
    with BagWriter(path) as writer:
        writer.add_topic("/lidar/points", "sensor_msgs/msg/PointCloud2")
        for i in range(3):
            cols = {c: rng.normal(size=50).astype(np.float32) for c in ("x", "y", "z", "intensity")}
            cols["label"] = np.full(50, 3, np.uint16)
            msg = make_pointcloud2(writer.typestore, cols, (i + 1) * 10**8, "lidar")
            if i == 1:
                msg = dataclasses.replace(msg, point_step=2**31, row_step=2**31, width=1)
            writer.write("/lidar/points", (i + 1) * 10**8, msg)
    return path


def test_labelled_sweeps_survive_one_message_with_a_huge_point_step(bag_with_a_huge_point_step: Path) -> None:
    data = load_config().data
    sweeps = index_labelled_sweeps([bag_with_a_huge_point_step], data).sweeps
    assert len(sweeps) == 3  # the prefix index cannot tell: decoding must
    evaluation = LabelledSweepDataset(sweeps, data, SYNTHETIC, train=False)
    items = [evaluation[i] for i in range(3)]
    assert [isinstance(x, SkippedSweep) for x in items] == [False, True, False]
    assert "2147483648" in items[1].reason  # type: ignore[union-attr]
    training = LabelledSweepDataset(sweeps, data, SYNTHETIC, train=True)
    replaced = training[1]
    assert not isinstance(replaced, SkippedSweep) and replaced.source == training[2].source  # type: ignore[union-attr]


def test_a_decoder_defect_still_costs_one_sweep_only(
    bag_with_a_huge_point_step: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: an untyped exception a future decoder defect might raise is contained too."""
    import lidar_ssl_core.downstream.data as downstream_data

    real = downstream_data.cloud_to_pointcloud  # type: ignore[attr-defined]

    def defective(msg: Any, **kw: Any) -> Any:
        if msg.header.stamp.sec == 0 and msg.header.stamp.nanosec == 3 * 10**8:
            raise ValueError("a bug in a decoder")
        return real(msg, **kw)

    monkeypatch.setattr(downstream_data, "cloud_to_pointcloud", defective)
    data = load_config().data
    sweeps = index_labelled_sweeps([bag_with_a_huge_point_step], data).sweeps
    items = [LabelledSweepDataset(sweeps, data, SYNTHETIC, train=False)[i] for i in range(3)]
    assert [isinstance(x, SkippedSweep) for x in items] == [False, True, True]
    assert "ValueError: a bug in a decoder" in items[2].reason  # type: ignore[union-attr]


def test_segment_skips_the_sweep_with_a_huge_point_step(
    bag_with_a_huge_point_step: Path, tmp_path: Path
) -> None:
    report = write_segmented_bag(
        bag_with_a_huge_point_step, tmp_path / "out", label_passthrough(SYNTHETIC), SYNTHETIC
    )
    assert report.sweeps_written == 2 and report.n_skipped == 1


# ------------------------------------------------------------------------------- 2. odd 4:2:2


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_odd_width_yuv422_is_a_malformed_message_error(encoding: str) -> None:
    msg = NS(header=HEADER, height=2, width=3, encoding=encoding, is_bigendian=False, step=6, data=bytes(12))
    with pytest.raises(MalformedMessageError, match="odd width"):
        image_to_rgb(msg)
    even = NS(**{**msg.__dict__, "width": 2, "step": 4, "data": bytes(8)})
    assert image_to_rgb(even).shape == (2, 2, 3)


# ------------------------------------------------------------------- 3, 5. sizes claimed by headers


def test_a_png_claiming_a_huge_size_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = compressed(png_claiming(100_000, 100_000))
    with pytest.raises(MalformedMessageError, match="claims 100000x100000"):
        compressed_image_size(msg)
    decoded = spy_imdecode(monkeypatch)
    for scale in (1.0, 0.5):
        with pytest.raises(MalformedMessageError, match="refused before decoding"):
            compressed_to_rgb(msg, scale)
    assert decoded == []


def test_a_png_whose_header_contradicts_camera_info_is_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """389 KB that decodes to 20000x20000 (2.3 GB): the header is compared with CameraInfo first."""
    msg = compressed(png_claiming(20_000, 20_000))
    assert compressed_image_size(msg, max_pixels=10**9) == (20_000, 20_000)
    decoded = spy_imdecode(monkeypatch)
    with pytest.raises(MalformedMessageError, match="CameraInfo says 64x48"):
        compressed_to_rgb(msg, expected_size=(64, 48), max_pixels=10**9)
    with pytest.raises(MalformedMessageError, match="limit 1000"):
        compressed_to_rgb(msg, max_pixels=1000)
    assert decoded == []


def test_a_bad_view_costs_that_view_not_the_frame(tmp_path: Path) -> None:
    """The sample bag with one front image replaced by a PNG claiming 100000x100000."""
    path = tmp_path / "bad_view"
    bad_topic = "/cameras/front/image/compressed"
    bad_time = None
    with BagReader(default_bag()) as reader, BagWriter(path) as writer:
        for topic, msgtype in reader.topics.items():
            writer.add_topic(topic, msgtype, latched=topic == "/tf_static")
        for m in reader.messages():
            if m.topic == bad_topic and bad_time is None:
                bad_time = m.log_time_ns
                data = np.frombuffer(png_claiming(100_000, 100_000), np.uint8)
                writer.write(m.topic, m.log_time_ns, dataclasses.replace(m.msg, format="png", data=data))
            else:
                writer.write(m.topic, m.log_time_ns, m.msg)
    config = load_config(overrides={"data.loader.max_image_pixels": 10**12}).data  # let indexing pass it
    index = index_bag(path, config)
    loader = FrameLoader(index, max_image_pixels=config.loader.max_image_pixels)
    cameras = [loader.load(i).cameras for i in range(len(index))]
    hit = [i for i, ref in enumerate(index.frames) if any(v.image.log_time_ns == bad_time for v in ref.views)]
    assert len(hit) == 1
    assert "front" not in cameras[hit[0]] and len(cameras[hit[0]]) == 5
    assert all(len(c) == 6 for i, c in enumerate(cameras) if i != hit[0])
    # the default limit refuses it already while indexing: the frame keeps its 5 other cameras
    assert "front" not in {v.camera for v in index_bag(path, load_config().data).frames[hit[0]].views}


@pytest.mark.parametrize("ext", [".webp", ".tiff", ".bmp"])
@pytest.mark.parametrize("fmt", ["jpeg", "png", ""])
def test_other_codecs_are_never_decoded_whatever_the_format_says(
    ext: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenCV decodes WebP/TIFF/BMP too, with no size checked first (2.5 KB of WebP can be 8000x8000)."""
    ok, enc = cv2.imencode(ext, np.zeros((40, 60, 3), np.uint8))
    assert ok
    msg = compressed(enc.tobytes(), fmt)
    decoded = spy_imdecode(monkeypatch)
    with pytest.raises(LidarSslError):
        compressed_image_size(msg)
    with pytest.raises(LidarSslError):
        compressed_to_rgb(msg)
    assert decoded == []


def test_a_jpeg_size_behind_stray_bytes_is_still_checked_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libjpeg skips bytes between segments; so must the header walker (or an unread size is decoded)."""
    ok, enc = cv2.imencode(".jpg", np.full((8, 8, 3), 100, np.uint8))
    assert ok
    raw = bytearray(enc.tobytes())
    sof = raw.find(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", 20_000, 20_000)
    msg = compressed(bytes(raw[:sof] + b"\x00\x01\x02" + raw[sof:]), "jpeg")
    decoded = spy_imdecode(monkeypatch)
    assert compressed_image_size(msg, max_pixels=10**9) == (20_000, 20_000)
    with pytest.raises(MalformedMessageError, match="refused before decoding"):
        compressed_to_rgb(msg, max_pixels=1_000_000)
    assert decoded == []
    ok, small = cv2.imencode(".jpg", np.full((8, 8, 3), 100, np.uint8))
    raw = bytearray(small.tobytes())
    sof = raw.find(b"\xff\xc0")
    stray = compressed(bytes(raw[:sof] + b"\x00\x01" + raw[sof:]), "jpeg")
    assert compressed_image_size(stray) == (8, 8) and compressed_to_rgb(stray).shape == (8, 8, 3)


# ------------------------------------------------------------------------- 4. reduced-scale PNG


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (5, 2)])
@pytest.mark.parametrize("fmt", [".png", ".jpg"])
def test_tiny_images_decode_at_reduced_scale(size: tuple[int, int], fmt: str) -> None:
    w, h = size
    ok, enc = cv2.imencode(fmt, np.full((h, w, 3), 128, np.uint8))
    assert ok
    msg = compressed(enc.tobytes(), fmt.lstrip(".").replace("jpg", "jpeg"))
    for scale in (0.5, 0.25, 0.1):
        rgb = compressed_to_rgb(msg, scale)
        assert rgb.shape == (max(1, round(h * scale)), max(1, round(w * scale)), 3)
        assert abs(int(rgb.mean()) - 128) <= 3


def test_a_png_labelled_jpeg_still_decodes_at_reduced_scale() -> None:
    """Reduced decoding is chosen from the bytes: a PNG whose format string says jpeg is not refused."""
    ok, enc = cv2.imencode(".png", np.full((4, 6, 3), 128, np.uint8))
    assert ok
    rgb = compressed_to_rgb(compressed(enc.tobytes(), "rgb8; jpeg compressed bgr8"), 0.1)
    assert rgb.shape == (1, 1, 3) and abs(int(rgb.mean()) - 128) <= 3


# ------------------------------------------------------------------- 9. values outside ROS ranges


BAD_INTS = [-1, None, 2**32, 2**64, "12", 1.5, float("nan")]


@pytest.mark.parametrize("value", BAD_INTS)
@pytest.mark.parametrize("name", ["height", "width", "point_step", "row_step"])
def test_pointcloud2_fields_outside_uint32_are_malformed(name: str, value: Any) -> None:
    with pytest.raises(MalformedMessageError, match=name):
        cloud_to_pointcloud(cloud_msg(**{name: value}))


@pytest.mark.parametrize("value", BAD_INTS)
@pytest.mark.parametrize("name", ["offset", "datatype", "count"])
def test_pointfield_values_outside_their_range_are_malformed(name: str, value: Any) -> None:
    msg = cloud_msg()
    msg.fields[0] = NS(**{**msg.fields[0].__dict__, name: value})
    with pytest.raises(MalformedMessageError, match=name):
        cloud_to_pointcloud(msg)


@pytest.mark.parametrize("value", BAD_INTS)
@pytest.mark.parametrize("name", ["height", "width", "step"])
def test_image_fields_outside_uint32_are_malformed(name: str, value: Any) -> None:
    msg = NS(header=HEADER, height=2, width=2, encoding="rgb8", is_bigendian=False, step=6, data=bytes(12))
    setattr(msg, name, value)
    with pytest.raises(MalformedMessageError, match=name):
        image_to_rgb(msg)


@pytest.mark.parametrize(
    "over",
    [{"width": None}, {"height": 2**40}, {"width": -1}, {"d": [2**2000]}, {"k": ["a"] * 9}],
)
def test_camera_info_values_outside_their_types_are_typed_errors(over: dict[str, Any]) -> None:
    base = dict(header=HEADER, width=4, height=3, k=[1, 0, 2, 0, 1, 1.5, 0, 0, 1], d=[], p=[0] * 12)
    with pytest.raises(MalformedMessageError):
        camera_info_to_intrinsics(NS(**{**base, **over}))


@pytest.mark.parametrize(
    "stamp",
    [
        NS(sec=None, nanosec=0),
        NS(sec="1", nanosec=0),
        NS(sec=2**31, nanosec=0),
        NS(sec=1, nanosec=-1),
        NS(sec=1.5, nanosec=0),
        NS(sec=1, nanosec=float("nan")),
        NS(secs=-1, nsecs=0),
    ],
)
def test_stamps_outside_their_types_are_malformed(stamp: Any) -> None:
    with pytest.raises(MalformedMessageError):
        stamp_to_ns(stamp)


@pytest.mark.parametrize("value", [None, "x", 2**2000])
def test_tf_values_that_are_not_numbers_are_malformed(value: Any) -> None:
    ts = NS(
        header=HEADER,
        child_frame_id="base",
        transform=NS(translation=NS(x=value, y=0, z=0), rotation=NS(x=0, y=0, z=0, w=1)),
    )
    with pytest.raises(MessageError):
        tf_message_to_transforms(NS(transforms=[ts]))
    with pytest.raises(LidarSslError):
        tf_message_to_transforms(NS(transforms=None))


@pytest.mark.parametrize(
    "data",
    [None, "abc", [300] * 24, [-1] * 24, [None] * 24, np.array([None] * 24, dtype=object), [[0] * 12] * 2],
)
def test_payloads_that_are_not_bytes_are_malformed(data: Any) -> None:
    """``data`` of duck-typed messages (uint8[] in ROS) holding anything but bytes: a typed error."""
    with pytest.raises(MalformedMessageError, match="data"):
        cloud_to_pointcloud(cloud_msg(data=data))
    image = NS(header=HEADER, height=2, width=2, encoding="rgb8", is_bigendian=False, step=6, data=data)
    with pytest.raises(MalformedMessageError, match="data"):
        image_to_rgb(image)
    with pytest.raises(MalformedMessageError, match="data"):
        compressed_to_rgb(NS(header=HEADER, format="png", data=data))


def test_payloads_as_lists_of_ints_still_decode() -> None:
    cloud = cloud_to_pointcloud(cloud_msg(data=[0] * 24))
    assert cloud.xyz.shape == (2, 3) and not cloud.xyz.any()
    image = NS(header=HEADER, height=1, width=2, encoding="rgb8", is_bigendian=False, step=6, data=[255] * 6)
    assert image_to_rgb(image).min() == 255


def test_in_range_values_of_python_types_still_decode() -> None:
    """Integral floats and numpy integers are what duck-typed messages carry: they are accepted."""
    cloud = cloud_to_pointcloud(cloud_msg(width=np.uint32(2), point_step=12.0, row_step=np.int64(24)))
    assert cloud.xyz.shape == (2, 3)
    assert stamp_to_ns(NS(sec=np.int32(3), nanosec=np.uint32(4))) == 3 * 10**9 + 4
    _ = DataConfig  # the typed config carries the pixel limit used above
    assert load_config().data.loader.max_image_pixels == 50_000_000
