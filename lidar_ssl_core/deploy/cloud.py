"""The labelled (segmented) point cloud layout, shared by ``lidar-ssl segment`` and the live ROS node.

:func:`build_segmented_cloud` returns a :class:`SegmentedCloud`: PointField descriptors, ``point_step``
and the packed little-endian point buffer. It does not import rosbags or rclpy; the caller fills its own
``sensor_msgs/PointCloud2`` with :meth:`SegmentedCloud.to_message` (duck-typed on the message and field
classes, so a rosbags typestore class and ``sensor_msgs.msg.PointCloud2`` both work).

Layout (every field aligned to its size, ``point_step`` a multiple of 4)::

    offset  0 x          float32
    offset  4 y          float32
    offset  8 z          float32
    offset 12 intensity  float32
    offset 16 rgb        float32  class colour packed as PCL does (bytes of uint32 0x00RRGGBB)
    offset 20 label      uint16   training id, ignore_index where there is no prediction
    offset 24 score      float32  softmax probability of the label (0 where none); only when scores given
    point_step 28 (24 without scores; bytes 22-23 are zero padding)

``rgb`` is what RViz's RGB8 colour transformer and Foxglove's "RGB (packed)" mode read.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import PointCloudInputError
from lidar_ssl_core.msg.pointcloud2 import FLOAT32, UINT16, FieldSpec, encode_cloud

#: name -> (offset, PointField datatype) of the segmented cloud (see the module docstring)
SEGMENTED_FIELDS: dict[str, tuple[int, int]] = {
    "x": (0, FLOAT32),
    "y": (4, FLOAT32),
    "z": (8, FLOAT32),
    "intensity": (12, FLOAT32),
    "rgb": (16, FLOAT32),
    "label": (20, UINT16),
    "score": (24, FLOAT32),
}


def pack_rgb(colors: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(N, 3) RGB uint8 -> (N,) float32 whose bytes are the uint32 0x00RRGGBB (PCL / RViz convention)."""
    c = np.asarray(colors, np.uint32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(rgb: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`pack_rgb`."""
    packed = np.asarray(rgb, "<f4").view("<u4")
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=-1).astype(np.uint8)


@dataclass(frozen=True)
class SegmentedCloud:
    """A packed segmented cloud: fields, ``point_step``, ``data`` (uint8 buffer), shape and density."""

    fields: tuple[FieldSpec, ...]
    point_step: int
    data: npt.NDArray[np.uint8]
    height: int
    width: int
    is_dense: bool

    @property
    def row_step(self) -> int:
        return self.point_step * self.width

    def to_message(
        self,
        cloud_cls: Any,
        field_cls: Any,
        header: Any,
        *,
        data_as: Literal["numpy", "array"] = "numpy",
    ) -> Any:
        """A PointCloud2 of ``cloud_cls`` (rosbags: ``typestore.types[...]``, rclpy: ``sensor_msgs.msg``).

        ``data_as="array"`` gives ``array.array('B')`` (what rclpy's setter takes without a per-byte
        check); ``"numpy"`` the uint8 array rosbags serialises.
        """
        data: Any = self.data
        if data_as == "array":
            data = array.array("B")
            data.frombytes(self.data.tobytes())
        return cloud_cls(
            header=header,
            height=self.height,
            width=self.width,
            fields=[
                field_cls(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                for f in self.fields
            ],
            is_bigendian=False,
            point_step=self.point_step,
            row_step=self.row_step,
            data=data,
            is_dense=self.is_dense,
        )


def build_segmented_cloud(
    xyz: npt.ArrayLike,
    intensity: npt.ArrayLike,
    labels: npt.ArrayLike,
    palette: npt.NDArray[np.uint8],
    *,
    ignore_index: int,
    ignore_color: tuple[int, int, int] = (0, 0, 0),
    scores: npt.ArrayLike | None = None,
    shape: tuple[int, int] | None = None,
) -> SegmentedCloud:
    """Pack points, labels, class colours (and scores) into the aligned segmented layout.

    ``xyz`` (N, 3), ``intensity`` (N,), ``labels`` (N,) training ids (``ignore_index`` or any id outside
    the palette gets ``ignore_color``), ``palette`` (C, 3) uint8, ``scores`` (N,) or None.
    ``shape=(height, width)`` keeps an organized cloud's shape (N = height * width).
    """
    pts = np.asarray(xyz, np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise PointCloudInputError(f"xyz must be (N, 3), got shape {pts.shape}")
    n = pts.shape[0]
    ids = np.asarray(labels)
    inten = np.asarray(intensity, np.float32)
    if ids.shape != (n,) or inten.shape != (n,):
        raise PointCloudInputError(
            f"labels {ids.shape} and intensity {inten.shape} must both be ({n},), one per point"
        )
    pal = np.asarray(palette, np.uint8).reshape(-1, 3)
    table = np.vstack([pal, np.asarray(ignore_color, np.uint8)[None]])
    index = np.where((ids >= 0) & (ids < len(pal)) & (ids != ignore_index), ids, len(pal)).astype(np.int64)
    columns: dict[str, npt.NDArray[Any]] = {
        "x": pts[:, 0],
        "y": pts[:, 1],
        "z": pts[:, 2],
        "intensity": inten,
        "rgb": pack_rgb(table[index]),
        "label": ids.astype(np.uint16),
    }
    step = 24
    if scores is not None:
        sc = np.asarray(scores, np.float32)
        if sc.shape != (n,):
            raise PointCloudInputError(f"scores must be ({n},), got {sc.shape}")
        columns["score"] = sc
        step = 28
    enc = encode_cloud(columns, offsets={k: SEGMENTED_FIELDS[k][0] for k in columns}, point_step=step)
    height, width = shape if shape is not None else (1, n)
    if height * width != n:
        raise PointCloudInputError(f"shape {shape} does not hold {n} points")
    dense = bool(np.isfinite(pts).all())
    return SegmentedCloud(
        tuple(enc.fields), enc.point_step, np.frombuffer(enc.data, np.uint8), height, width, dense
    )


__all__ = ["SEGMENTED_FIELDS", "SegmentedCloud", "build_segmented_cloud", "pack_rgb", "unpack_rgb"]
