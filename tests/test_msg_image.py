"""Image / CompressedImage -> RGB: encodings, padding, endianness, bayer, jpeg/png, reduced decoding."""

from __future__ import annotations

import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from lidar_ssl_core.errors import MalformedMessageError, UnsupportedEncodingError
from lidar_ssl_core.msg.image import (
    compressed_from_bytes,
    compressed_image_size,
    compressed_to_rgb,
    image_to_array,
    image_to_rgb,
    make_compressed_image,
    make_image,
)

TS = get_typestore(Stores.ROS2_JAZZY)
STAMP = 1_700_000_000_123_456_789


def roundtrip(msg: Any, msgtype: str) -> Any:
    return TS.deserialize_cdr(TS.serialize_cdr(msg, msgtype), msgtype)


def rgb_image(h: int = 12, w: int = 17) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def raw_image(data: bytes, h: int, w: int, encoding: str, step: int, big: bool = False) -> SimpleNamespace:
    """rclpy-like Image (array.array data)."""
    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=1, nanosec=2), frame_id="cam"),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=big,
        step=step,
        data=array.array("B", data),
    )


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_color_encodings_round_trip(encoding: str) -> None:
    rgb = rgb_image()
    msg = roundtrip(make_image(TS, rgb, STAMP, "cam", encoding), "sensor_msgs/msg/Image")
    assert msg.step == rgb.shape[1] * 3
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.writeable
    if encoding == "bgr8":
        np.testing.assert_array_equal(image_to_array(msg), rgb[:, :, ::-1])


@pytest.mark.parametrize(
    ("encoding", "order"), [("rgba8", [0, 1, 2]), ("bgra8", [2, 1, 0]), ("8UC3", [2, 1, 0])]
)
def test_alpha_and_generic_encodings(encoding: str, order: list[int]) -> None:
    rgb = rgb_image()
    channels = 3 if encoding == "8UC3" else 4
    stored = np.concatenate([rgb[:, :, order], np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    stored = stored[:, :, :channels]
    msg = raw_image(stored.tobytes(), rgb.shape[0], rgb.shape[1], encoding, rgb.shape[1] * channels)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def test_mono8_and_mono16_with_scaling() -> None:
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    msg = roundtrip(make_image(TS, gray, STAMP, "cam", "mono8"), "sensor_msgs/msg/Image")
    out = image_to_rgb(msg)
    assert out.shape == (12, 10, 3)
    np.testing.assert_array_equal(out[:, :, 1], gray)
    depth = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30).astype(np.uint16)
    for encoding in ("mono16", "16UC1"):
        msg16 = roundtrip(make_image(TS, depth, STAMP, "cam", encoding), "sensor_msgs/msg/Image")
        native = image_to_array(msg16)
        assert native.dtype == np.uint16
        np.testing.assert_array_equal(native, depth)
        rgb = image_to_rgb(msg16)
        assert rgb.dtype == np.uint8
        assert rgb.max() == 255  # "auto": the image's maximum maps to 255
        assert rgb[0, 0, 0] == 0
        fixed = image_to_rgb(msg16, scale16=65535.0)
        assert fixed.max() == int(int(depth.max()) * 255 / 65535)


def test_big_endian_16bit_and_row_padding() -> None:
    h, w, pad = 5, 7, 6
    depth = np.arange(h * w, dtype=np.uint16).reshape(h, w) * 1000
    rows = depth.astype(">u2").view(np.uint8).reshape(h, w * 2)
    padded = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = raw_image(padded.tobytes(), h, w, "16UC1", w * 2 + pad, big=True)
    native = image_to_array(msg)
    assert native.dtype.isnative
    np.testing.assert_array_equal(native, depth)
    rgb = rgb_image(h, w)
    rows8 = np.concatenate([rgb.reshape(h, w * 3), np.zeros((h, pad), np.uint8)], axis=1)
    np.testing.assert_array_equal(image_to_rgb(raw_image(rows8.tobytes(), h, w, "rgb8", w * 3 + pad)), rgb)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_demosaic_to_the_right_colour(pattern: str) -> None:
    color = {"r": 200, "g": 120, "b": 40}
    h, w = 16, 16
    mosaic = np.zeros((h, w), np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = color[pattern[dy * 2 + dx]]
    msg = raw_image(mosaic.tobytes(), h, w, f"bayer_{pattern}8", w)
    rgb = image_to_rgb(msg)
    centre = rgb[4:-4, 4:-4].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(centre, [200, 120, 40], atol=2)


def test_image_errors_name_the_problem() -> None:
    rgb = rgb_image(4, 4)
    with pytest.raises(UnsupportedEncodingError, match="'weird8'"):
        image_to_rgb(raw_image(rgb.tobytes(), 4, 4, "weird8", 12))
    with pytest.raises(MalformedMessageError, match="step 12 x height 4"):
        image_to_rgb(raw_image(rgb.tobytes()[:-1], 4, 4, "rgb8", 12))
    with pytest.raises(MalformedMessageError, match=r"step 10 is smaller"):
        image_to_rgb(raw_image(rgb.tobytes(), 4, 4, "rgb8", 10))


def test_real_rclpy_image_if_installed() -> None:
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    rgb = rgb_image()
    msg = sensor_msgs.Image()
    msg.height, msg.width, msg.encoding, msg.step = rgb.shape[0], rgb.shape[1], "bgr8", rgb.shape[1] * 3
    msg.data = array.array("B", rgb[:, :, ::-1].tobytes())
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


# ------------------------------------------------------------------------------------------ compressed


def smooth_rgb(h: int = 120, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], axis=2).astype(np.uint8)


def test_png_is_lossless_and_jpeg_close() -> None:
    rgb = smooth_rgb()
    png = roundtrip(
        make_compressed_image(TS, rgb, STAMP, "cam", fmt="png"), "sensor_msgs/msg/CompressedImage"
    )
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)
    jpg = make_compressed_image(TS, rgb, STAMP, "cam", fmt="jpeg", quality=95)
    out = compressed_to_rgb(jpg)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 3
    assert compressed_image_size(jpg) == (160, 120)
    assert compressed_image_size(png) == (160, 120)


@pytest.mark.parametrize(
    "fmt", ["jpeg", "png", "rgb8; jpeg compressed bgr8", "JPEG", "", "bgr8; png compressed bgr8"]
)
def test_format_strings_are_parsed_tolerantly(fmt: str) -> None:
    rgb = smooth_rgb(40, 60)
    kind = "png" if "png" in fmt else "jpeg"
    msg = make_compressed_image(TS, rgb, STAMP, "cam", fmt=kind)  # type: ignore[arg-type]
    msg.format = fmt
    assert compressed_to_rgb(msg).shape == (40, 60, 3)


@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth png", "h264", "theora"])
def test_unknown_compressed_formats(fmt: str) -> None:
    msg = make_compressed_image(TS, smooth_rgb(8, 8), STAMP, "cam")
    msg.format = fmt
    with pytest.raises(UnsupportedEncodingError, match="format"):
        compressed_to_rgb(msg)


def test_undecodable_data_is_malformed() -> None:
    msg = SimpleNamespace(format="jpeg", data=array.array("B", bytes(range(256)) * 4))
    with pytest.raises(MalformedMessageError, match="neither JPEG nor PNG"):
        compressed_to_rgb(msg)
    empty = SimpleNamespace(format="png", data=b"")
    with pytest.raises(MalformedMessageError, match="no data"):
        compressed_to_rgb(empty)


@pytest.mark.parametrize("scale", [0.5, 0.25, 0.125, 0.3, 0.1, 1.5])
def test_scaled_decoding_gives_exact_sizes(scale: float) -> None:
    rgb = smooth_rgb(123, 171)
    msg = make_compressed_image(TS, rgb, STAMP, "cam", quality=95)
    out = compressed_to_rgb(msg, scale=scale)
    assert out.shape == (round(123 * scale), round(171 * scale), 3)
    ref = cv2.resize(rgb, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 6


def test_nuscenes_jpeg_kept_as_bytes_and_reduced(nuscenes_root: Path) -> None:
    path = next((nuscenes_root / "samples" / "CAM_FRONT").glob("*.jpg"))
    data = path.read_bytes()
    msg = roundtrip(compressed_from_bytes(TS, data, STAMP, "CAM_FRONT"), "sensor_msgs/msg/CompressedImage")
    assert bytes(msg.data) == data
    assert msg.format == "rgb8; jpeg compressed bgr8"
    assert compressed_image_size(msg) == (1600, 900)
    full = compressed_to_rgb(msg)
    assert full.shape == (900, 1600, 3)
    reference = cv2.imread(str(path))
    assert reference is not None
    np.testing.assert_array_equal(full, cv2.cvtColor(reference, cv2.COLOR_BGR2RGB))
    quarter = compressed_to_rgb(msg, scale=0.25)
    assert quarter.shape == (225, 400, 3)
    ref = cv2.resize(full, (400, 225), interpolation=cv2.INTER_AREA)
    assert np.abs(quarter.astype(int) - ref.astype(int)).mean() < 4
