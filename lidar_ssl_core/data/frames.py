"""Decode indexed frames on demand: one sweep, its camera images, and the calibration to pair them.

A :class:`FrameLoader` reads through a :class:`ReaderPool` that bounds the open bags per process and
starts afresh after a fork, so the same objects work in the main process and inside DataLoader workers
(readers hold file handles that must not be shared between processes). A frame's messages are read in
one pass over its time window, so each storage chunk is decompressed once per frame.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.data.bag_index import BagIndex, FrameRef
from lidar_ssl_core.errors import BagReadError, DatasetError, MessageError
from lidar_ssl_core.geometry.projection import project_cloud
from lidar_ssl_core.msg.image import DEFAULT_MAX_IMAGE_PIXELS, compressed_to_rgb, image_to_rgb
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

    def project(self, min_depth: float) -> PointPixelPairs:
        """Point-pixel pairs of every camera (a point seen by two cameras is listed twice)."""
        projections = [
            project_cloud(self.cloud.xyz, T, intr, min_depth)
            for T, intr in zip(self.T_cam_lidar, self.intrinsics, strict=True)
        ]
        if not projections:
            return PointPixelPairs.empty()
        return PointPixelPairs(
            point_index=np.concatenate([p.point_index for p in projections]),
            camera_index=np.concatenate(
                [np.full(len(p), i, dtype=np.int64) for i, p in enumerate(projections)]
            ),
            pixel=np.concatenate([p.pixel for p in projections]).reshape(-1, 2),
        )


class ReaderPool:
    """At most ``capacity`` open bag readers per process, least recently used closed first.

    Readers hold file handles: a dataset of a thousand bags must not keep them all open in every worker,
    and a reader must never cross a fork, so the pool notices a new process and starts empty there.
    """

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._open: OrderedDict[Path, BagReader] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"])  # type: ignore[misc]

    def get(self, path: Path) -> BagReader:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use or close
            self._open, self._pid = OrderedDict(), os.getpid()
        reader = self._open.pop(path, None)
        if reader is None:
            reader = BagReader(path).open()
            while len(self._open) >= self.capacity:
                _, oldest = self._open.popitem(last=False)
                oldest.close()
        self._open[path] = reader
        return reader

    def close(self) -> None:
        if self._pid == os.getpid():
            for reader in self._open.values():
                reader.close()
        self._open.clear()


class FrameLoader:
    """Random access to the frames of one indexed bag (see module docstring)."""

    def __init__(
        self,
        index: BagIndex,
        *,
        image_scale: float = 1.0,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        label_field: str = "label",
        require_all_cameras: bool = False,
        readers: ReaderPool | None = None,
    ) -> None:
        self.index = index
        self.image_scale = image_scale
        self.max_image_pixels = max_image_pixels
        self.label_field = label_field
        self.require_all_cameras = require_all_cameras
        self.readers = readers if readers is not None else ReaderPool(capacity=1)

    def __len__(self) -> int:
        return len(self.index)

    def _messages(self, ref: FrameRef) -> dict[tuple[str, int], Any]:
        """Every message of a frame in one pass over its time window (each chunk decompressed once)."""
        refs = [ref.lidar, *(v.image for v in ref.views)]
        wanted = {(r.topic, r.log_time_ns) for r in refs}
        start = min(r.log_time_ns for r in refs)
        stop = max(r.log_time_ns for r in refs) + 1
        reader = self.readers.get(self.index.path)
        found: dict[tuple[str, int], Any] = {}
        for message in reader.messages(
            {r.topic for r in refs}, start_ns=start, stop_ns=stop, on_error="skip"
        ):
            key = (message.topic, message.log_time_ns)
            if key in wanted and key not in found:
                found[key] = message.msg
        return found

    def load(self, position: int) -> Frame:
        """Decode frame ``position``; a camera whose image cannot be decoded is left out (logged).

        Raises ``MessageError`` for an unreadable sweep and ``DatasetError`` when no camera is left (or
        one is missing while every camera is required), so a dataset can replace the frame.
        """
        ref: FrameRef = self.index.frames[position]
        where = f"{self.index.path.name}#{position}"
        messages = self._messages(ref)
        lidar_msg = messages.get((ref.lidar.topic, ref.lidar.log_time_ns))
        if lidar_msg is None:
            raise BagReadError(
                f"{where}: sweep on {ref.lidar.topic} at log time {ref.lidar.log_time_ns} is unreadable"
            )
        try:
            cloud = cloud_to_pointcloud(lidar_msg, label_field=self.label_field)
        except MessageError as err:
            raise err.with_context(topic=ref.lidar.topic, stamp_ns=ref.lidar.stamp_ns) from err
        cameras, images, intrinsics, transforms = [], [], [], []
        for view in ref.views:
            msg = messages.get((view.image.topic, view.image.log_time_ns))
            try:
                if msg is None:
                    raise MessageError("image is unreadable in the bag")
                image = self._decode_image(msg, camera=view.camera)
                intr = self._intrinsics_for(view.camera, image)
            except MessageError as err:
                log.warning(
                    "%s: %s", where, err.with_context(topic=view.image.topic, stamp_ns=view.image.stamp_ns)
                )
                continue
            cameras.append(view.camera)
            images.append(CameraImage(image, view.image.stamp_ns, intr.frame_id or view.camera))
            intrinsics.append(intr)
            transforms.append(view.T_cam_lidar)
        if not cameras or (self.require_all_cameras and len(cameras) < len(ref.views)):
            missing = len(ref.views) - len(cameras)
            raise DatasetError(f"{where}: {missing} of {len(ref.views)} camera images could not be decoded")
        return Frame(cloud, tuple(cameras), tuple(images), tuple(intrinsics), tuple(transforms))

    def _intrinsics_for(self, camera: str, image: npt.NDArray[np.uint8]) -> CameraIntrinsics:
        """Intrinsics for the decoded image; a size that CameraInfo does not explain is an error."""
        intr = self.index.rig.camera(camera).intrinsics
        h, w = image.shape[:2]
        expect_w, expect_h = round(intr.width * self.image_scale), round(intr.height * self.image_scale)
        if abs(w - expect_w) > 1 or abs(h - expect_h) > 1:
            info = f"{intr.width}x{intr.height}"
            raise MessageError(f"image is {w}x{h} but CameraInfo says {info} (x {self.image_scale} scale)")
        if (w, h) != (intr.width, intr.height):
            intr = intr.scaled(w / intr.width, h / intr.height)
        return intr

    def _decode_image(self, msg: Any, *, camera: str) -> npt.NDArray[np.uint8]:
        if hasattr(msg, "format"):  # header checked against CameraInfo before anything is allocated
            intr = self.index.rig.camera(camera).intrinsics
            return compressed_to_rgb(
                msg,
                scale=self.image_scale,
                expected_size=(intr.width, intr.height),
                max_pixels=self.max_image_pixels,
            )
        rgb = image_to_rgb(msg)
        if self.image_scale != 1.0:
            size = (
                max(1, round(rgb.shape[1] * self.image_scale)),
                max(1, round(rgb.shape[0] * self.image_scale)),
            )
            rgb = np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        return rgb
