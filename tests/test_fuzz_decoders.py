"""Property-based fuzzing of every message decoder (issue 13): any input gives a correct result or one of
the project's errors (a ``LidarSslError``), within a time bound (hypothesis ``deadline``) and a memory
bound (peak traced allocation per example, and output size proportional to the input).

CI runs a bounded, derandomized campaign (about a minute on two loaded cores). A longer, random campaign:

    LIDAR_SSL_FUZZ_EXAMPLES=20000 .venv/bin/pytest -p no:xdist -q tests/test_fuzz_decoders.py

(examples per test; figures of the last long run are in docs/reliability.md).
"""

from __future__ import annotations

import functools
import os
import struct
import tracemalloc
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_msg_robustness import png_claiming

from lidar_ssl_core.bag.typestore import typestore_for
from lidar_ssl_core.errors import LidarSslError
from lidar_ssl_core.msg import (
    camera_info_to_intrinsics,
    cloud_to_pointcloud_counted,
    compressed_image_size,
    compressed_to_rgb,
    image_to_rgb,
    make_image,
    make_pointcloud2,
    read_cloud,
    stamp_to_ns,
    tf_message_to_transforms,
)
from lidar_ssl_core.msg.pointcloud2 import pointcloud2_header_and_fields

NS = SimpleNamespace
T = TypeVar("T")

LONG_RUN = int(os.environ.get("LIDAR_SSL_FUZZ_EXAMPLES", "0"))
settings.register_profile(
    "lidar-ssl-fuzz",
    deadline=2000,  # ms per example, generous for a loaded CI machine; the decoders take ~1 ms
    derandomize=not LONG_RUN,  # CI: the same campaign every run; long runs explore
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)


def examples(ci: int) -> Callable[[T], T]:
    """Per-test example count: ``ci`` in CI, ``LIDAR_SSL_FUZZ_EXAMPLES`` in a long run."""
    return settings(settings.get_profile("lidar-ssl-fuzz"), max_examples=LONG_RUN or ci)  # type: ignore[return-value]


MAX_PIXELS = 1_000_000  # the configured limit the image fuzz decodes under (data.loader.max_image_pixels)
MEMORY_BOUND = 16 * 2**20  # bytes of peak traced allocation per example, plus a multiple of the input
TS = typestore_for("jazzy")


def bounded(
    decode: Callable[[], T], input_bytes: int, *, per_input_byte: int = 8, extra: int = 0
) -> T | None:
    """Run ``decode``: its result, or None for a project error; any other exception fails the test.

    The peak of traced allocations (numpy and OpenCV outputs included) must stay within
    ``MEMORY_BOUND + per_input_byte * input_bytes + extra``: no input may make a decoder allocate
    far more than it was given (the 389 KB PNG that asked for 2.3 GB).
    """
    tracemalloc.start()  # only around the decoder: tracing slows every allocation, generation included
    try:
        result: T | None = decode()
    except LidarSslError:
        result = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    limit = MEMORY_BOUND + per_input_byte * input_bytes + extra
    assert peak <= limit, f"decoder peaked at {peak} bytes for a {input_bytes}-byte input (limit {limit})"
    return result


# ------------------------------------------------------------------------------------- strategies

EDGE_INTS: list[Any] = [-1, None, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**64, 1.5, "3", float("nan")]


def sizes(hi: int) -> st.SearchStrategy[Any]:
    """Mostly plausible small values, sometimes the edges of (and beyond) the ROS integer types."""
    return st.one_of(st.integers(0, hi), st.integers(0, hi), st.sampled_from(EDGE_INTS))


stamps = st.builds(
    NS,
    sec=st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(EDGE_INTS)),
    nanosec=st.one_of(st.integers(0, 10**9 - 1), st.sampled_from([*EDGE_INTS, 10**9])),
)
frame_ids = st.one_of(st.sampled_from(["lidar", "/cam", ""]), st.text(max_size=8))
headers = st.builds(NS, stamp=stamps, frame_id=frame_ids)
FIELD_NAMES = ["x", "y", "z", "intensity", "ring", "label", "i", "", "rgb"]
#: ``uint8[]`` payloads of duck-typed messages that are not bytes (typed errors, never numpy's).
not_bytes: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from([None, "abc", 3.5, [None, 1], np.array([None] * 4, dtype=object)]),
    st.lists(st.integers(-(2**70), 2**70), min_size=1, max_size=64).filter(
        lambda v: min(v) < 0 or max(v) > 255
    ),
)


def payload_bytes(draw: st.DrawFn, n: int) -> bytes:
    """``n`` bytes: a drawn pattern of up to 64 bytes repeated (cheap to generate at any size)."""
    pattern = draw(st.binary(min_size=min(n, 64), max_size=min(n, 64)))
    return (pattern * (n // max(1, len(pattern)) + 1))[:n] if pattern else bytes(n)


@st.composite
def pointcloud2_messages(draw: st.DrawFn) -> Any:
    fields = draw(
        st.lists(
            st.builds(
                NS,
                name=st.sampled_from(FIELD_NAMES),
                offset=sizes(40),
                datatype=st.one_of(st.integers(0, 9), st.sampled_from(EDGE_INTS)),
                count=st.one_of(st.integers(0, 3), st.sampled_from(EDGE_INTS)),
            ),
            max_size=6,
        )
    )
    height, width, point_step = draw(sizes(4)), draw(sizes(16)), draw(sizes(48))
    row_step = draw(st.one_of(sizes(400), st.just("consistent")))
    if row_step == "consistent" and all(isinstance(v, int) and v >= 0 for v in (width, point_step)):
        row_step = width * point_step + draw(st.sampled_from([0, 0, 4]))
    elif row_step == "consistent":
        row_step = 0
    n_data = draw(st.one_of(st.integers(0, 512), st.just("consistent")))
    if n_data == "consistent" and all(isinstance(v, int) and 0 <= v < 2**16 for v in (row_step, height)):
        n_data = row_step * height
    elif n_data == "consistent":
        n_data = 0
    data = payload_bytes(draw, n_data)
    as_type = draw(st.sampled_from([bytes, list, np.ndarray]))
    payload: Any = np.frombuffer(data, np.uint8) if as_type is np.ndarray else as_type(data)
    payload = draw(st.one_of(st.just(payload), st.just(payload), st.just(payload), not_bytes))
    return NS(
        header=draw(headers),
        height=height,
        width=width,
        fields=fields,
        is_bigendian=draw(st.booleans()),
        point_step=point_step,
        row_step=row_step,
        data=payload,
        is_dense=draw(st.booleans()),
    )


def _payload_size(msg: Any) -> int:
    if isinstance(msg.data, np.ndarray):
        return int(msg.data.nbytes)
    return len(msg.data) if isinstance(msg.data, bytes | list | str) else 0


# --------------------------------------------------------------------------------- PointCloud2


@examples(600)
@given(pointcloud2_messages())
def test_any_pointcloud2_decodes_or_raises_a_project_error(msg: Any) -> None:
    n_in = _payload_size(msg)
    out = bounded(lambda: cloud_to_pointcloud_counted(msg), n_in)
    if out is None:
        return
    cloud, n_bad = out
    n = len(cloud.xyz)
    assert cloud.xyz.shape == (n, 3) and cloud.xyz.dtype == np.float32
    assert np.isfinite(cloud.xyz).all() and cloud.intensity.shape == (n,)
    assert n + n_bad == int(msg.height) * int(msg.width)
    assert n_bad >= 0 and (cloud.label is None or cloud.label.shape == (n,))


COLUMN_TYPES = [np.float32, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32]


@st.composite
def cloud_columns(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for name in ("x", "y", "z"):
        col = rng.normal(size=n) * 50
        if draw(st.booleans()) and n:
            col[rng.integers(0, n)] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        cols[name] = col.astype(draw(st.sampled_from([np.float32, np.float64])))
    for name in draw(st.lists(st.sampled_from(["intensity", "ring", "label", "extra"]), unique=True)):
        dtype = np.dtype(draw(st.sampled_from(COLUMN_TYPES)))
        high = 100 if dtype.kind == "f" else min(int(np.iinfo(dtype).max), 1000)
        cols[name] = rng.integers(0, high + 1, size=n).astype(dtype)
    return cols


@examples(150)
@given(cloud_columns(), st.booleans(), st.integers(0, 8), st.sampled_from([None, (1, 0), (0, 1)]))
def test_valid_pointcloud2_round_trips(
    cols: dict[str, np.ndarray], big_endian: bool, pad: int, organized: tuple[int, int] | None
) -> None:
    n = len(cols["x"])
    needed = sum(c.dtype.itemsize for c in cols.values())
    shape = None if organized is None else ((n, 1) if organized == (1, 0) else (1, n))
    msg = make_pointcloud2(TS, cols, 5, "lidar", shape=shape, big_endian=big_endian, point_step=needed + pad)
    wire = TS.deserialize_cdr(
        TS.serialize_cdr(msg, "sensor_msgs/msg/PointCloud2"), "sensor_msgs/msg/PointCloud2"
    )
    cloud, n_bad = cloud_to_pointcloud_counted(wire)
    finite = np.isfinite(cols["x"]) & np.isfinite(cols["y"]) & np.isfinite(cols["z"])
    assert n_bad == n - int(finite.sum())
    want = np.stack([cols[c][finite].astype(np.float32) for c in "xyz"], axis=1).reshape(-1, 3)
    assert want.shape == cloud.xyz.shape and float(np.abs(cloud.xyz - want).max(initial=0.0)) == 0.0
    if "label" in cols:
        assert cloud.label is not None and (cloud.label == cols["label"][finite].astype(np.int64)).all()
    header = pointcloud2_header_and_fields(TS.serialize_cdr(msg, "sensor_msgs/msg/PointCloud2"))
    assert header.stamp_ns == 5 and header.frame_id == "lidar" and header.field_names == tuple(cols)
    assert read_cloud(wire).dtype.itemsize == needed + pad


# --------------------------------------------------------------------------- CDR prefix parser

_CLOUD_CDR = TS.serialize_cdr(
    make_pointcloud2(TS, {"x": np.zeros(3, np.float32), "label": np.ones(3, np.uint16)}, 7, "velo"),
    "sensor_msgs/msg/PointCloud2",
)


@st.composite
def mutated_cdr(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from([bytes(_CLOUD_CDR), bytes(_CLOUD_CDR[:80])])))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        op = draw(st.sampled_from(["flip", "cut", "u32", "insert"]))
        if not raw:
            break
        if op == "flip":
            raw[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos:]
        elif op == "u32" and pos + 4 <= len(raw):
            value = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, len(raw), 4096]))
            raw[pos : pos + 4] = struct.pack("<I", value)
        else:
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


@examples(800)
@given(st.one_of(st.binary(max_size=200), mutated_cdr()))
def test_any_bytes_give_a_pointcloud2_prefix_or_a_project_error(raw: bytes) -> None:
    out = bounded(lambda: pointcloud2_header_and_fields(raw), len(raw))
    if out is not None:
        assert 0 <= out.stamp_ns % 10**9 < 10**9 and len(out.field_names) <= len(raw) // 13
        assert all(isinstance(name, str) for name in out.field_names)


def test_the_unmutated_prefix_is_read_exactly() -> None:
    assert tuple(pointcloud2_header_and_fields(_CLOUD_CDR)) == (7, "velo", ("x", "label"))


# ------------------------------------------------------------------------------------ Image

ENCODINGS = [
    "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16", "16UC1", "32FC1", "8UC3", "8UC2", "64FC1",
    "bayer_rggb8", "bayer_gbrg16", "yuv422", "yuyv", "uyvy", "8SC4", "16SC2", "nv12", "", "RGB8",
]  # fmt: skip


@st.composite
def image_messages(draw: st.DrawFn) -> Any:
    height, width, step = draw(sizes(12)), draw(sizes(12)), draw(st.one_of(sizes(96), st.just("consistent")))
    encoding = draw(st.sampled_from(ENCODINGS))
    if step == "consistent":
        try:
            from lidar_ssl_core.msg.image import encoding_layout

            dtype, channels = encoding_layout(encoding)
            step = int(width) * dtype.itemsize * channels if isinstance(width, int) and width >= 0 else 0
        except (LidarSslError, TypeError, ValueError):
            step = 0
    n = int(step) * int(height) if all(isinstance(v, int) and 0 <= v < 4096 for v in (step, height)) else 0
    n += draw(st.sampled_from([0, 0, 0, -1, 3]))
    data = payload_bytes(draw, max(n, 0))
    return NS(
        header=draw(headers),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=draw(st.booleans()),
        step=step,
        data=draw(st.sampled_from([np.frombuffer(data, np.uint8), data, data, np.frombuffer(data, np.uint8)]))
        if draw(st.integers(0, 7))
        else draw(not_bytes),
    )


@examples(600)
@given(image_messages())
def test_any_image_decodes_or_raises_a_project_error(msg: Any) -> None:
    rgb = bounded(lambda: image_to_rgb(msg), _payload_size(msg), per_input_byte=16)
    if rgb is not None:
        assert rgb.dtype == np.uint8 and rgb.shape == (int(msg.height), int(msg.width), 3)


@examples(100)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["rgb8", "bgr8", "rgba8"]),
)
def test_valid_images_round_trip(h: int, w: int, seed: int, encoding: str) -> None:
    channels = 4 if encoding == "rgba8" else 3
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    wire = TS.deserialize_cdr(
        TS.serialize_cdr(make_image(TS, rgb, 0, "cam", encoding), "sensor_msgs/msg/Image"),
        "sensor_msgs/msg/Image",
    )
    assert (image_to_rgb(wire) == rgb[:, :, :3]).all()


# ------------------------------------------------------------------------------ CompressedImage


@functools.cache
def other_codec(ext: str) -> bytes:
    """A 4000x4000 image in a codec OpenCV decodes but the ROS formats do not name (WebP: 678 bytes)."""
    ok, enc = cv2.imencode(ext, np.zeros((4000, 4000, 3), np.uint8))
    assert ok
    return enc.tobytes()


@st.composite
def compressed_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["jpeg", "png", "png-claim", "random", "other"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "other":
        return other_codec(draw(st.sampled_from([".webp", ".tiff"])))
    if kind == "png-claim":  # a valid PNG whose header claims any size, from tiny to absurd
        size = st.one_of(st.integers(1, 64), st.sampled_from([2000, 20000, 100000, 2**31 - 1, 2**32 - 1, 0]))
        return png_claiming(draw(size), draw(size), draw(st.binary(max_size=64)))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    img = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ok, enc = cv2.imencode(".jpg" if kind == "jpeg" else ".png", img)
    assert ok
    raw = bytearray(enc.tobytes())
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "cut", "size"]))
        if op == "flip":
            raw[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del raw[max(1, pos) :]
        elif kind == "png" and len(raw) >= 24:
            raw[16:24] = struct.pack(">II", draw(st.integers(0, 70000)), draw(st.integers(0, 70000)))
        elif (
            kind == "jpeg" and (sof := raw.find(b"\xff\xc0")) > 0
        ):  # a claimed size, maybe behind stray bytes
            raw[sof + 5 : sof + 9] = struct.pack(
                ">HH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
            )
            raw[sof:sof] = draw(st.binary(max_size=3).filter(lambda b: b"\xff" not in b))
        if not raw:
            break
    return bytes(raw)


FORMATS = [
    "jpeg",
    "png",
    "rgb8; jpeg compressed bgr8",
    "bgr8; png compressed bgr8",
    "",
    "compressedDepth",
    "h264",
]


@examples(600)
@given(compressed_payloads(), st.sampled_from(FORMATS), st.sampled_from([1.0, 0.5, 0.3, 0.25, 0.1]))
def test_any_compressed_image_decodes_or_raises_a_project_error(data: bytes, fmt: str, scale: float) -> None:
    msg = NS(
        header=NS(stamp=NS(sec=0, nanosec=0), frame_id="cam"), format=fmt, data=np.frombuffer(data, np.uint8)
    )
    decode_cost = 4 * 3 * MAX_PIXELS  # OpenCV may allocate the full image before finding it truncated
    size = bounded(lambda: compressed_image_size(msg, max_pixels=MAX_PIXELS), len(data), extra=decode_cost)
    if size is not None:
        assert size[0] > 0 and size[1] > 0 and size[0] * size[1] <= MAX_PIXELS
    rgb = bounded(lambda: compressed_to_rgb(msg, scale, max_pixels=MAX_PIXELS), len(data), extra=decode_cost)
    if rgb is not None:
        assert size is not None, "decoded an image whose size could not be read"
        assert rgb.dtype == np.uint8 and rgb.shape == (
            max(1, round(size[1] * scale)),
            max(1, round(size[0] * scale)),
            3,
        )


# ----------------------------------------------------------------------------------- CameraInfo

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([None, "1", 0.0, 1.0]),
)


@st.composite
def camera_infos(draw: st.DrawFn) -> Any:
    def values(size: int) -> Any:
        plausible = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0][:size]
        return draw(
            st.one_of(
                st.just(plausible),
                st.lists(numbers, min_size=size, max_size=size),
                st.lists(numbers, max_size=14),
                st.sampled_from([None, "abc", 3.0]),
            )
        )

    return NS(
        header=draw(headers),
        width=draw(sizes(4000)),
        height=draw(sizes(4000)),
        distortion_model=draw(st.sampled_from(["plumb_bob", "", "equidistant", None])),
        k=values(9),
        d=draw(st.one_of(st.lists(numbers, max_size=8), st.just([]))),
        p=values(12),
    )


@examples(300)
@given(camera_infos())
def test_any_camera_info_gives_intrinsics_or_a_project_error(msg: Any) -> None:
    intr = bounded(lambda: camera_info_to_intrinsics(msg), 1024)
    if intr is not None:
        assert intr.width > 0 and intr.height > 0 and np.isfinite(intr.K).all()
        assert intr.K[0, 0] > 0 and intr.K[1, 1] > 0


# ------------------------------------------------------------------------------------ TFMessage

floats = st.one_of(
    st.floats(-1e3, 1e3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, "x", 2**2000]),
)
unit_quaternions = st.tuples(st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1), st.floats(-1, 1)).filter(
    lambda q: sum(v * v for v in q) > 1e-3
)


@st.composite
def transforms(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        q = np.asarray(draw(unit_quaternions))
        qx, qy, qz, qw = (float(v) for v in q / np.linalg.norm(q))
    else:
        qx, qy, qz, qw = (draw(floats) for _ in range(4))
    return NS(
        header=draw(headers),
        child_frame_id=draw(frame_ids),
        transform=NS(
            translation=NS(x=draw(floats), y=draw(floats), z=draw(floats)),
            rotation=NS(x=qx, y=qy, z=qz, w=qw),
        ),
    )


@examples(300)
@given(st.one_of(st.lists(transforms(), max_size=4), st.sampled_from([None, "tf", 3])))
def test_any_tf_message_gives_transforms_or_a_project_error(items: Any) -> None:
    out = bounded(lambda: tf_message_to_transforms(NS(transforms=items)), 1024)
    if out is not None:
        assert len(out) == len(items)
        for t in out:
            R = t.matrix[:3, :3]
            assert np.isfinite(t.matrix).all() and np.allclose(R @ R.T, np.eye(3), atol=1e-9)
            assert t.parent and t.child


@examples(200)
@given(stamps)
def test_any_stamp_gives_nanoseconds_or_a_project_error(stamp: Any) -> None:
    ns = bounded(lambda: stamp_to_ns(stamp), 64)
    if ns is not None:
        assert ns == int(stamp.sec) * 10**9 + int(stamp.nanosec) and 0 <= int(stamp.nanosec) < 10**9
