"""Decode indexed frames on demand: one sweep, its camera images, and the calibration to pair them.

A :class:`FrameLoader` keeps one open reader per bag and reopens it after a fork, so the same object
works in the main process and inside DataLoader workers (readers hold file handles that must not be
shared between processes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.data.bag_index import BagIndex, FrameRef, MessageRef
from lidar_ssl_core.errors import BagReadError, MessageError
from lidar_ssl_core.geometry.projection import Projection, project_cloud
from lidar_ssl_core.msg.image import compressed_to_rgb, image_to_rgb
from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud
from lidar_ssl_core.types import CameraImage, CameraIntrinsics, PointCloud, PointPixelPairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """A decoded synchronised frame. Camera lists are parallel and in the index's camera order."""

    cloud: PointCloud
    cameras: tuple[str, ...]
    images: tuple[CameraImage, ...]
    intrinsics: tuple[CameraIntrinsics, ...]  # of the decoded images (scaled when decoded smaller)
    T_cam_lidar: tuple[npt.NDArray[np.float64], ...]  # (4, 4) each

    def project(self, min_depth: float) -> tuple[PointPixelPairs, list[Projection]]:
        """Point-pixel pairs of every camera (a point seen by two cameras is listed twice)."""
        projections = [
            project_cloud(self.cloud.xyz, T, intr, min_depth)
            for T, intr in zip(self.T_cam_lidar, self.intrinsics, strict=True)
        ]
        if not projections:
            return PointPixelPairs.empty(), projections
        pairs = PointPixelPairs(
            point_index=np.concatenate([p.point_index for p in projections]),
            camera_index=np.concatenate(
                [np.full(len(p), i, dtype=np.int64) for i, p in enumerate(projections)]
            ),
            pixel=np.concatenate([p.pixel for p in projections]).reshape(-1, 2),
        )
        return pairs, projections


class FrameLoader:
    """Random access to the frames of indexed bags (see module docstring)."""

    def __init__(self, index: BagIndex, *, image_scale: float = 1.0, label_field: str = "label") -> None:
        self.index = index
        self.image_scale = image_scale
        self.label_field = label_field
        self._reader: BagReader | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, -1
        return state

    def _open(self) -> BagReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader = BagReader(self.index.path).open()
            self._pid = os.getpid()
        return self._reader

    def close(self) -> None:
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __len__(self) -> int:
        return len(self.index)

    def _message(self, ref: MessageRef) -> Any:
        reader = self._open()
        for message in reader.messages([ref.topic], start_ns=ref.log_time_ns, stop_ns=ref.log_time_ns + 1):
            return message.msg
        raise BagReadError(f"{self.index.path}: no message on {ref.topic} at log time {ref.log_time_ns}")

    def load(self, position: int) -> Frame:
        """Decode frame ``position``; a camera whose image cannot be decoded is left out (logged)."""
        ref: FrameRef = self.index.frames[position]
        try:
            cloud = cloud_to_pointcloud(self._message(ref.lidar), label_field=self.label_field)
        except MessageError as err:
            raise err.with_context(topic=ref.lidar.topic, stamp_ns=ref.lidar.stamp_ns) from err
        cameras, images, intrinsics, transforms = [], [], [], []
        for view in ref.views:
            try:
                image = self._decode_image(self._message(view.image))
            except MessageError as err:
                log.warning("%s", err.with_context(topic=view.image.topic, stamp_ns=view.image.stamp_ns))
                continue
            intr = self.index.rig.camera(view.camera).intrinsics
            h, w = image.shape[:2]
            if (w, h) != (intr.width, intr.height):
                intr = intr.scaled(w / intr.width, h / intr.height)
            cameras.append(view.camera)
            images.append(CameraImage(image, view.image.stamp_ns, intr.frame_id or view.camera))
            intrinsics.append(intr)
            transforms.append(view.T_cam_lidar)
        return Frame(cloud, tuple(cameras), tuple(images), tuple(intrinsics), tuple(transforms))

    def _decode_image(self, msg: Any) -> npt.NDArray[np.uint8]:
        if hasattr(msg, "format"):
            return compressed_to_rgb(msg, scale=self.image_scale)
        rgb = image_to_rgb(msg)
        if self.image_scale != 1.0:
            import cv2

            size = (
                max(1, round(rgb.shape[1] * self.image_scale)),
                max(1, round(rgb.shape[0] * self.image_scale)),
            )
            rgb = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        return rgb
