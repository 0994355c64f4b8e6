"""The segmented-cloud layout: aligned fields, and an RViz-style unpacking that round-trips."""

from __future__ import annotations

import itertools
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lidar_ssl_core.deploy.cloud import build_segmented_cloud, unpack_rgb
from lidar_ssl_core.errors import PointCloudInputError
from lidar_ssl_core.msg.pointcloud2 import DATATYPES, read_cloud

PALETTE = np.array([[255, 0, 0], [0, 200, 0], [10, 20, 250]], np.uint8)


def _cloud(n: int = 7, scores: bool = True) -> tuple[Any, ...]:
    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    xyz[2] = np.nan
    inten = rng.uniform(0, 255, n).astype(np.float32)
    labels = np.array([0, 1, 255, 2, 1, 0, 2][:n])
    sc = rng.uniform(0, 1, n).astype(np.float32) if scores else None
    return xyz, inten, labels, sc


@pytest.mark.parametrize("with_scores", [True, False])
def test_fields_are_aligned_to_their_size(with_scores: bool) -> None:
    xyz, inten, labels, sc = _cloud(scores=with_scores)
    cloud = build_segmented_cloud(xyz, inten, labels, PALETTE, ignore_index=255, scores=sc)
    assert cloud.point_step % 4 == 0
    assert cloud.point_step == (28 if with_scores else 24)
    ends = []
    for f in cloud.fields:
        size = np.dtype(DATATYPES[f.datatype][1]).itemsize
        assert f.offset % size == 0, f"{f.name} at {f.offset} is not aligned to {size}"
        ends.append((f.offset, f.offset + size * f.count))
    ends.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ends)), "fields overlap"
    assert ends[-1][1] <= cloud.point_step
    assert len(cloud.data) == cloud.point_step * len(labels) and not cloud.is_dense


def test_rviz_style_unpacking_round_trips() -> None:
    """Decode the buffer as RViz does: per point, struct-unpack each field at its offset (little endian)."""
    xyz, inten, labels, sc = _cloud()
    cloud = build_segmented_cloud(xyz, inten, labels, PALETTE, ignore_index=255, scores=sc)
    fmt = {7: "<f", 4: "<H"}
    buf = cloud.data.tobytes()
    for i in range(len(labels)):
        base = i * cloud.point_step
        got = {f.name: struct.unpack_from(fmt[f.datatype], buf, base + f.offset)[0] for f in cloud.fields}
        np.testing.assert_array_equal(np.float32([got["x"], got["y"], got["z"]]), xyz[i])
        assert np.float32(got["intensity"]) == inten[i] and np.float32(got["score"]) == sc[i]
        assert got["label"] == labels[i]
        packed = struct.unpack_from("<I", buf, base + 16)[0]  # RViz RGB8: the float's bytes as 0x00RRGGBB
        rgb = ((packed >> 16) & 255, (packed >> 8) & 255, packed & 255)
        expected = (0, 0, 0) if labels[i] == 255 else tuple(int(c) for c in PALETTE[labels[i]])
        assert rgb == expected


def test_to_message_is_readable_by_the_project_reader() -> None:
    xyz, inten, labels, sc = _cloud()
    cloud = build_segmented_cloud(xyz, inten, labels, PALETTE, ignore_index=255, scores=sc)
    msg = cloud.to_message(SimpleNamespace, SimpleNamespace, SimpleNamespace(frame_id="lidar"))
    pts = read_cloud(msg)
    np.testing.assert_array_equal(pts["label"], labels)
    np.testing.assert_array_equal(pts["score"], sc)
    np.testing.assert_array_equal(unpack_rgb(pts["rgb"])[0], PALETTE[0])
    as_array = cloud.to_message(SimpleNamespace, SimpleNamespace, None, data_as="array")
    assert as_array.data.typecode == "B" and as_array.data.tobytes() == cloud.data.tobytes()


def test_bad_shapes_are_typed_errors() -> None:
    xyz, inten, labels, _ = _cloud()
    with pytest.raises(PointCloudInputError, match="labels"):
        build_segmented_cloud(xyz, inten, labels[:3], PALETTE, ignore_index=255)
    with pytest.raises(PointCloudInputError, match=r"\(N, 3\)"):
        build_segmented_cloud(xyz[:, :2], inten, labels, PALETTE, ignore_index=255)
    with pytest.raises(PointCloudInputError, match="shape"):
        build_segmented_cloud(xyz, inten, labels, PALETTE, ignore_index=255, shape=(2, 2))
