"""Header stamp and frame id of a serialized message, read from its CDR bytes without deserializing it.

Every sensor message the recorder handles (PointCloud2, Image, CompressedImage, CameraInfo) starts with a
``std_msgs/Header``: after the 4-byte encapsulation header come ``stamp.sec`` (int32), ``stamp.nanosec``
(uint32) and ``frame_id`` (uint32 byte count including the NUL, then the bytes). Reading those 12 + n
bytes lets the recorder stamp, synchronize and store a 1600x900 image without ever decoding it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from lidar_ssl_core.errors import MalformedMessageError
from lidar_ssl_core.msg.stamps import NS_PER_S

_STAMP = {True: struct.Struct("<iI"), False: struct.Struct(">iI")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_MAX_FRAME_ID = 4096


class CdrHeader(NamedTuple):
    """``header.stamp`` in nanoseconds and ``header.frame_id`` of a serialized message."""

    stamp_ns: int
    frame_id: str
    end: int  # offset of the first byte after the header (the message body starts at the next alignment)


def read_header(raw: bytes | bytearray | memoryview, *, what: str = "message") -> CdrHeader:
    """Parse the leading ``std_msgs/Header`` of a plain-CDR message (rosbag2 / DDS serialization).

    MalformedMessageError (naming ``what``) on a buffer too short, an unknown encapsulation or a garbled
    frame id.
    """
    view = raw if isinstance(raw, bytes) else memoryview(raw).cast("B")
    size = len(view)
    if size < 16:
        raise MalformedMessageError(f"{what}: {size} bytes of CDR cannot hold a header")
    if view[0] != 0 or view[1] not in (0, 1):
        raise MalformedMessageError(
            f"{what}: CDR encapsulation 0x{view[0]:02x}{view[1]:02x} is not plain CDR (0x0000 / 0x0001)"
        )
    little = view[1] == 1
    sec, nanosec = _STAMP[little].unpack_from(view, 4)
    if nanosec >= NS_PER_S:
        raise MalformedMessageError(f"{what}: header stamp nanosec={nanosec} is outside [0, 1e9)")
    (n,) = _U32[little].unpack_from(view, 12)
    end = 16 + n
    if n == 0 or n > _MAX_FRAME_ID or end > size or view[end - 1] != 0:
        raise MalformedMessageError(f"{what}: header.frame_id claims {n} bytes of a {size}-byte message")
    try:
        frame_id = bytes(view[16 : end - 1]).decode()
    except UnicodeDecodeError as err:
        raise MalformedMessageError(f"{what}: header.frame_id is not UTF-8 ({err})") from None
    return CdrHeader(sec * NS_PER_S + nanosec, frame_id, end)


def read_stamp_ns(raw: bytes | bytearray | memoryview, *, what: str = "message") -> int:
    """``header.stamp`` of a serialized message in nanoseconds (see :func:`read_header`)."""
    return read_header(raw, what=what).stamp_ns
