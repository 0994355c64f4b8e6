"""sensor_msgs/Image and CompressedImage <-> numpy (RGB uint8 for the learning side).

Duck-typed like the PointCloud2 helpers: ``data`` may be a numpy array (rosbags), ``array.array('B')``,
``bytes`` or a list (rclpy). Decisions:

- ``8UC3``/``8UC4`` are read as BGR/BGRA: a generic 8-bit 3-channel image almost always comes from
  ``cv_bridge.cv2_to_imgmsg(img)`` with OpenCV's BGR data.
- Single-channel 16-bit / float images (mono16, 16UC1, 32FC1, ...) become 8-bit for RGB use by scaling
  with the image's own maximum (``scale16="auto"``, so 10/12-bit sensors are not near-black) or a fixed
  full-scale value; ``image_to_array`` returns the native values (e.g. uint16 depth in mm).
- Bayer images are demosaiced with OpenCV (ROS ``bayer_rggb`` is OpenCV's ``BayerBG`` and so on).
- Compressed images: jpeg and png, recognised from the ROS format string ("jpeg", "png",
  "rgb8; jpeg compressed bgr8", ...) or, when it is empty, from the magic bytes. ``compressedDepth`` and
  video codecs are unsupported.
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import MalformedMessageError, UnsupportedEncodingError
from lidar_ssl_core.msg.pointcloud2 import byte_buffer
from lidar_ssl_core.msg.ranges import uint32_field
from lidar_ssl_core.msg.stamps import make_header

UInt8Image = npt.NDArray[np.uint8]

#: encoding -> (numpy type code, channels)
_NAMED: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "rgb16": ("u2", 3),
    "bgr16": ("u2", 3),
    "rgba16": ("u2", 4),
    "bgra16": ("u2", 4),
    "mono16": ("u2", 1),
    "yuv422": ("u1", 2),  # UYVY
    "uyvy": ("u1", 2),
    "yuv422_yuy2": ("u1", 2),  # YUYV
    "yuyv": ("u1", 2),
}
_BAYER_TO_CV = {  # ROS pattern -> OpenCV code (OpenCV names the pattern from the second row/column)
    "rggb": cv2.COLOR_BayerBG2RGB,
    "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB,
    "grbg": cv2.COLOR_BayerGB2RGB,
}
_YUV_TO_CV = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
}
_GENERIC = re.compile(r"^(8|16|32|64)([USF])C([1-4])$")
_BAYER = re.compile(r"^bayer_(rggb|bggr|gbrg|grbg)(8|16)$")

#: Default ceiling on the pixels a compressed image may claim in its header (checked before decoding:
#: a 389 KB PNG can claim 20000x20000 and cost gigabytes). ``data.loader.max_image_pixels`` in the config.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    """(element dtype without byte order, channels) of a ROS image encoding."""
    if encoding in _NAMED:
        code, channels = _NAMED[encoding]
        return np.dtype(code), channels
    if m := _BAYER.match(encoding):
        return np.dtype("u1" if m.group(2) == "8" else "u2"), 1
    if m := _GENERIC.match(encoding.upper()):
        bits, kind, channels = int(m.group(1)), m.group(2), int(m.group(3))
        code = {"U": "u", "S": "i", "F": "f"}[kind] + str(bits // 8)
        if code in ("f1", "f2", "u8", "i8"):
            raise UnsupportedEncodingError(f"image encoding '{encoding}' is not supported")
        return np.dtype(code), channels
    raise UnsupportedEncodingError(
        f"image encoding '{encoding}' is not supported (rgb8, bgr8, rgba8, bgra8, mono8, mono16, "
        "nUCk/nSCk/nFCk, bayer_*8/16, yuv422)"
    )


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> native array, (H, W) or (H, W, C), in native byte order.

    A zero-copy read-only view unless the message is big-endian (then a converted copy).
    """
    encoding = str(msg.encoding)
    dtype, channels = encoding_layout(encoding)
    height = uint32_field(msg.height, "Image.height")
    width = uint32_field(msg.width, "Image.width")
    step = uint32_field(msg.step, "Image.step")
    big = bool(msg.is_bigendian) and dtype.itemsize > 1
    dtype = dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype
    pixel = dtype.itemsize * channels
    buf = byte_buffer(msg.data)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if height <= 0 or width <= 0:
        raise MalformedMessageError(f"Image has size {width}x{height}; both must be > 0")
    if step < width * pixel:
        raise MalformedMessageError(
            f"Image.step {step} is smaller than width {width} x {pixel} bytes per '{encoding}' pixel"
        )
    if buf.size < step * height:
        raise MalformedMessageError(
            f"Image.data has {buf.size} bytes, expected step {step} x height {height} = {step * height}"
        )
    strides = (step, pixel) if channels == 1 else (step, pixel, dtype.itemsize)
    arr = np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)
    if not dtype.isnative:
        return arr.astype(dtype.newbyteorder("="))
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def _to_uint8(values: np.ndarray, scale16: float | Literal["auto"]) -> UInt8Image:
    """Scale a non-uint8 single/multi-channel array to uint8."""
    if values.dtype == np.uint8:
        return np.asarray(values, dtype=np.uint8)
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, mapped to 255 below
        v = values.astype(np.float32)
    if scale16 == "auto":
        finite = v[np.isfinite(v)]
        full = float(finite.max()) if finite.size else 0.0
    else:
        full = float(scale16)
    if full <= 0.0:
        return np.zeros(values.shape, np.uint8)
    out = np.nan_to_num(v * (255.0 / full), nan=0.0, posinf=255.0, neginf=0.0)
    return np.asarray(np.clip(out, 0.0, 255.0), dtype=np.uint8)


def image_to_rgb(msg: Any, *, scale16: float | Literal["auto"] = "auto") -> UInt8Image:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB (a new, writable array)."""
    encoding = str(msg.encoding)
    arr = image_to_array(msg)
    if m := _BAYER.match(encoding):
        rgb = cv2.cvtColor(np.ascontiguousarray(arr), _BAYER_TO_CV[m.group(1)])
        return _to_uint8(rgb, 65535.0)
    if encoding in _YUV_TO_CV:
        if arr.shape[1] % 2:  # 4:2:2 shares one U/V pair between two pixels of a row
            raise MalformedMessageError(
                f"'{encoding}' image has an odd width {arr.shape[1]}; 4:2:2 needs it even"
            )
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(arr), _YUV_TO_CV[encoding]), np.uint8)
    if arr.ndim == 2:
        gray = _to_uint8(arr, scale16)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if arr.shape[2] == 2:
        raise UnsupportedEncodingError(f"image encoding '{encoding}' (2 channels) has no RGB meaning")
    if arr.dtype == np.uint8:
        color = arr
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        color = _to_uint8(arr, 65535.0)
    else:
        color = _to_uint8(arr, scale16)
    bgr_order = encoding.startswith("bgr") or _GENERIC.match(encoding.upper()) is not None
    rgb = color[:, :, 2::-1] if bgr_order else color[:, :, :3]
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)


# ---------------------------------------------------------------------------------------- compressed


def compressed_kind(fmt: str, data: npt.NDArray[np.uint8] | None = None) -> Literal["jpeg", "png"]:
    """'jpeg' or 'png' from a ROS CompressedImage.format (tolerant), else from the magic bytes."""
    text = str(fmt).strip().lower()
    if "compresseddepth" in text:
        raise UnsupportedEncodingError(f"CompressedImage format '{fmt}' (compressedDepth) is not supported")
    tokens = set(re.split(r"[;\s]+", text)) - {""}
    if tokens & {"jpeg", "jpg"}:
        return "jpeg"
    if "png" in tokens:
        return "png"
    if data is not None and tokens <= {"rgb8", "bgr8", "mono8", "compressed", "rgba8", "bgra8"}:
        head = bytes(data[:8])
        if head.startswith(JPEG_MAGIC):
            return "jpeg"
        if head.startswith(PNG_MAGIC):
            return "png"
    raise UnsupportedEncodingError(f"CompressedImage format '{fmt}' is not supported (expected jpeg or png)")


def _jpeg_header(data: npt.NDArray[np.uint8]) -> tuple[int, int, int] | None:
    """(width, height, components) from the first SOF marker, walking segment lengths only.

    Bytes between segments that are not a marker are skipped up to the next 0xFF, as libjpeg does
    (with a "corrupt data" warning): a walker stricter than the decoder would let a header it cannot read
    reach the decoder unchecked.
    """
    n = int(data.size)
    if n < 4 or bytes(data[:3]) != JPEG_MAGIC:
        return None
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            skip = np.flatnonzero(data[pos:] == 0xFF)
            if skip.size == 0:
                return None
            pos += int(skip[0])
            continue
        marker = int(data[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        length = (int(data[pos + 2]) << 8) | int(data[pos + 3])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if pos + 10 > n:
                return None
            height = (int(data[pos + 5]) << 8) | int(data[pos + 6])
            width = (int(data[pos + 7]) << 8) | int(data[pos + 8])
            return width, height, int(data[pos + 9])
        if marker in (0xD9, 0xDA) or length < 2:  # EOI / start of scan before any SOF
            return None
        pos += 2 + length
    return None


def _png_header(data: npt.NDArray[np.uint8]) -> tuple[int, int, int] | None:
    """(width, height, colour type) from the IHDR chunk."""
    if data.size < 26 or bytes(data[:8]) != PNG_MAGIC or bytes(data[12:16]) != b"IHDR":
        return None
    width = int.from_bytes(bytes(data[16:20]), "big")
    height = int.from_bytes(bytes(data[20:24]), "big")
    return width, height, int(data[25])


def _header_size(data: npt.NDArray[np.uint8]) -> tuple[int, int] | None:
    """(width, height) the JPEG/PNG header claims, None when it cannot be read without decoding."""
    header = _jpeg_header(data) or _png_header(data)
    if header is not None and header[0] > 0 and header[1] > 0:
        return header[0], header[1]
    return None


def _check_claimed_size(size: tuple[int, int], fmt: str, max_pixels: int) -> None:
    if size[0] * size[1] > max_pixels:
        raise MalformedMessageError(
            f"CompressedImage ('{fmt}') header claims {size[0]}x{size[1]} = {size[0] * size[1]} pixels, "
            f"more than the limit {max_pixels} (data.loader.max_image_pixels): refused before decoding"
        )


def _readable_size(data: npt.NDArray[np.uint8], fmt: str) -> tuple[int, int]:
    """The header's (width, height); a MalformedMessageError when there is no JPEG SOF / PNG IHDR to read.

    Nothing is ever decoded without a size read first: OpenCV also decodes WebP, TIFF, BMP, ... whatever
    the format string says, and a 2.5 KB WebP can claim 8000x8000 (hundreds of MB once decoded).
    """
    if data.size == 0:
        raise MalformedMessageError(f"CompressedImage ('{fmt}') has no data")
    size = _header_size(data)
    if size is None:
        head = bytes(data[:8])
        what = "JPEG" if head.startswith(JPEG_MAGIC) else "PNG" if head.startswith(PNG_MAGIC) else None
        raise MalformedMessageError(
            f"CompressedImage ('{fmt}', {data.size} bytes): "
            + (
                f"{what} header without a readable image size"
                if what
                else f"data is neither JPEG nor PNG (starts with {head.hex()})"
            )
            + "; refused without decoding"
        )
    return size


def compressed_image_size(msg: Any, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of a CompressedImage from its header bytes (never decodes).

    A header claiming more than ``max_pixels``, or no readable JPEG/PNG header, is a
    ``MalformedMessageError``: whoever sizes buffers from this answer (or decodes next) must not trust a
    corrupt or hostile header.
    """
    data = byte_buffer(msg.data)
    fmt = str(msg.format)
    size = _readable_size(data, fmt)
    _check_claimed_size(size, fmt, max_pixels)
    return size


def _decode(data: npt.NDArray[np.uint8], flags: int, fmt: str) -> np.ndarray:
    try:
        img = cv2.imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as err:  # e.g. a size beyond OpenCV's own pixel limit
        raise MalformedMessageError(
            f"CompressedImage ('{fmt}', {data.size} bytes) could not be decoded: {_cv_reason(err)}"
        ) from None
    if img is None or img.size == 0:
        raise MalformedMessageError(
            f"CompressedImage ('{fmt}', {data.size} bytes) could not be decoded: corrupt or truncated"
        )
    return img


def _cv_reason(err: cv2.error) -> str:
    """The assertion line of an OpenCV error, without its multi-line source location preamble."""
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def compressed_to_rgb(
    msg: Any,
    scale: float = 1.0,
    *,
    expected_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> UInt8Image:
    """CompressedImage (jpeg/png) -> (round(H*scale), round(W*scale), 3) uint8 RGB.

    The header's size is checked before decoding: against ``expected_size`` (width, height, e.g. the
    camera's CameraInfo) when given, and against ``max_pixels`` always; a mismatch is a
    ``MalformedMessageError`` and nothing is allocated. For scale <= 1/2, 1/4, 1/8 libjpeg decodes at
    reduced size directly (IMREAD_REDUCED_COLOR_*), much cheaper than decoding full size; PNG is decoded
    full size. The result is then resized to the exact requested size.
    """
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"scale must be a positive number, got {scale}")
    data = byte_buffer(msg.data)
    fmt = str(msg.format)
    compressed_kind(fmt, data)  # refuses compressedDepth, video codecs and unknown formats
    claimed = _readable_size(data, fmt)
    if expected_size is not None and tuple(claimed) != tuple(expected_size):
        raise MalformedMessageError(
            f"CompressedImage ('{fmt}') header says {claimed[0]}x{claimed[1]} but the camera's "
            f"CameraInfo says {expected_size[0]}x{expected_size[1]}: refused before decoding"
        )
    _check_claimed_size(claimed, fmt, max_pixels)
    flag = cv2.IMREAD_COLOR
    # Only libjpeg decodes at reduced size (OpenCV's PNG path fails on tiny images): judge by the bytes,
    # not the format string, which may call a PNG "jpeg".
    if bytes(data[:3]) == JPEG_MAGIC:
        if scale <= 1 / 8:
            flag = cv2.IMREAD_REDUCED_COLOR_8
        elif scale <= 1 / 4:
            flag = cv2.IMREAD_REDUCED_COLOR_4
        elif scale <= 1 / 2:
            flag = cv2.IMREAD_REDUCED_COLOR_2
    bgr = _decode(data, flag, fmt)
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise MalformedMessageError(f"CompressedImage ('{fmt}') decoded to shape {bgr.shape}, not BGR")
    if scale != 1.0:
        width, height = claimed
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if (bgr.shape[1], bgr.shape[0]) != target:
            shrink = target[0] < bgr.shape[1]
            bgr = cv2.resize(bgr, target, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ builders


def make_image(
    typestore: Any, image: npt.ArrayLike, stamp_ns: int, frame_id: str, encoding: str = "rgb8"
) -> Any:
    """sensor_msgs/msg/Image of ``typestore``.

    For rgb8/bgr8/rgba8/bgra8 ``image`` is RGB(A) uint8 and is reordered as the encoding says; for any
    other encoding it is taken as already laid out (e.g. (H, W) uint16 for mono16/16UC1).
    """
    arr = np.asarray(image)
    dtype, channels = encoding_layout(encoding)
    if encoding.startswith("bgr"):
        arr = arr[:, :, [2, 1, 0, *range(3, arr.shape[2])]]
    expected = (channels,) if channels > 1 else ()
    if arr.ndim != 2 + (channels > 1) or arr.shape[2:] != expected or arr.dtype.kind != dtype.kind:
        raise MalformedMessageError(
            f"make_image: array of shape {arr.shape} dtype {arr.dtype} does not fit encoding '{encoding}'"
        )
    arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))
    height, width = arr.shape[:2]
    image_cls = typestore.types["sensor_msgs/msg/Image"]
    return image_cls(
        header=make_header(typestore, stamp_ns, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=sys.byteorder == "big",
        step=width * channels * dtype.itemsize,
        data=arr.reshape(-1).view(np.uint8),
    )


def _format_string(kind: str, color: bool) -> str:
    """image_transport's format string ("rgb8; jpeg compressed bgr8"), understood by every consumer."""
    return f"rgb8; {kind} compressed bgr8" if color else f"mono8; {kind} compressed mono8"


def make_compressed_image(
    typestore: Any,
    rgb: npt.ArrayLike,
    stamp_ns: int,
    frame_id: str,
    fmt: Literal["jpeg", "png"] = "jpeg",
    quality: int = 90,
) -> Any:
    """sensor_msgs/msg/CompressedImage from an (H, W, 3) RGB or (H, W) mono uint8 array."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise MalformedMessageError(
            f"make_compressed_image needs (H, W, 3) or (H, W) uint8, got {arr.shape} {arr.dtype}"
        )
    color = arr.ndim == 3
    src = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if color else arr
    if fmt == "jpeg":
        ok, enc = cv2.imencode(".jpg", src, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif fmt == "png":
        ok, enc = cv2.imencode(".png", src, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise UnsupportedEncodingError(f"compressed format '{fmt}' is not supported (jpeg or png)")
    if not ok:
        raise MalformedMessageError(f"OpenCV could not encode a {arr.shape} image as {fmt}")
    return _compressed(typestore, enc.reshape(-1), stamp_ns, frame_id, _format_string(fmt, color))


def compressed_from_bytes(
    typestore: Any,
    data: bytes | npt.NDArray[np.uint8],
    stamp_ns: int,
    frame_id: str,
    format_string: str | None = None,
) -> Any:
    """CompressedImage holding existing jpeg/png bytes unchanged (converters keep the original file).

    The format string is derived from the bytes (jpeg/png, colour/mono) unless given.
    """
    buf = byte_buffer(data)
    if format_string is None:
        if (jpeg := _jpeg_header(buf)) is not None:
            format_string = _format_string("jpeg", jpeg[2] != 1)
        elif (png := _png_header(buf)) is not None:
            format_string = _format_string("png", png[2] not in (0, 4))
        else:
            raise UnsupportedEncodingError("compressed_from_bytes: data is neither a jpeg nor a png")
    return _compressed(typestore, buf, stamp_ns, frame_id, format_string)


def _compressed(typestore: Any, data: npt.NDArray[np.uint8], stamp_ns: int, frame_id: str, fmt: str) -> Any:
    cls = typestore.types["sensor_msgs/msg/CompressedImage"]
    return cls(header=make_header(typestore, stamp_ns, frame_id), format=fmt, data=data)
