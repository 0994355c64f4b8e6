"""Plain records that flow between the modules (frames, images, calibration, transforms).

Arrays are numpy; shapes and dtypes are stated per field. Records are frozen: a step that changes data
(augmentation, cropping) returns a new record, so a cached value is never mutated behind a reader's back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]
UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class PointCloud:
    """One LiDAR sweep in its sensor frame."""

    xyz: npt.NDArray[np.float32]  # (N, 3)
    intensity: npt.NDArray[np.float32]  # (N,)
    stamp_ns: int
    frame_id: str
    ring: npt.NDArray[np.uint16] | None = None  # (N,)
    label: npt.NDArray[np.int64] | None = None  # (N,) raw dataset ids; absent when unlabelled

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


@dataclass(frozen=True)
class CameraImage:
    """One camera image, always RGB uint8 once decoded."""

    image: UInt8Array  # (H, W, 3)
    stamp_ns: int
    frame_id: str

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics as in sensor_msgs/CameraInfo (ROS conventions, row-major)."""

    K: npt.NDArray[np.float64]  # (3, 3)
    width: int
    height: int
    frame_id: str = ""
    D: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))  # (k,)
    distortion_model: str = "plumb_bob"
    P: npt.NDArray[np.float64] | None = None  # (3, 4); defaults to [K | 0]

    @property
    def projection(self) -> npt.NDArray[np.float64]:
        if self.P is not None:
            return self.P
        return np.hstack([self.K, np.zeros((3, 1))])

    @property
    def is_distorted(self) -> bool:
        return bool(self.D.size) and bool(np.any(self.D != 0.0))

    def scaled(self, sx: float, sy: float) -> CameraIntrinsics:
        """Intrinsics of the same camera whose image was resized by (sx, sy).

        Pixel-centre aligned (integer pixel coordinates are pixel centres, as in OpenCV and our
        projection): u' = sx (u + 0.5) - 0.5, likewise for v.
        """
        scale = np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])
        P = None if self.P is None else scale @ self.P
        return CameraIntrinsics(
            K=scale @ self.K,
            width=round(self.width * sx),
            height=round(self.height * sy),
            frame_id=self.frame_id,
            D=self.D,
            distortion_model=self.distortion_model,
            P=P,
        )


@dataclass(frozen=True)
class StampedTransform:
    """A rigid transform that maps points from ``child`` coordinates into ``parent`` coordinates."""

    parent: str
    child: str
    stamp_ns: int
    matrix: npt.NDArray[np.float64]  # (4, 4)


@dataclass(frozen=True)
class PointPixelPairs:
    """Point-pixel correspondences of one sample, listed per camera (a point seen twice appears twice)."""

    point_index: npt.NDArray[np.int64]  # (M,) index into the sample's points
    camera_index: npt.NDArray[np.int64]  # (M,) index into the sample's images
    pixel: npt.NDArray[np.int64]  # (M, 2) (row, col) in that camera's image

    def __len__(self) -> int:
        return int(self.point_index.shape[0])

    def select(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.integer]) -> PointPixelPairs:
        """Pairs at a boolean mask or at integer positions."""
        if mask.dtype == np.bool_:  # np.compress is ~8x faster than boolean indexing of (M, 2)
            keep = mask.astype(np.bool_, copy=False)
            return PointPixelPairs(
                np.compress(keep, self.point_index),
                np.compress(keep, self.camera_index),
                np.compress(keep, self.pixel, axis=0),
            )
        return PointPixelPairs(self.point_index[mask], self.camera_index[mask], self.pixel[mask])

    @staticmethod
    def empty() -> PointPixelPairs:
        return PointPixelPairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.int64))
