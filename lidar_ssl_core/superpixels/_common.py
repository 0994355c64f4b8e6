"""Helpers shared by the superpixel modules: input checks, label arrays, the SLIC seed grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
from skimage.util import regular_grid as _regular_grid

from lidar_ssl_core.errors import SuperpixelError

# scikit-image ships no type hints: give its seed-grid helper the signature it documents
regular_grid = cast(Callable[[tuple[int, int], int], tuple[slice, slice]], _regular_grid)

Int32Array = npt.NDArray[np.int32]
UInt8Array = npt.NDArray[np.uint8]


def check_rgb(rgb: object) -> UInt8Array:
    """Return ``rgb`` as a C-contiguous (H, W, 3) uint8 array or raise naming what is wrong."""
    if not isinstance(rgb, np.ndarray):
        raise SuperpixelError(f"superpixels need a numpy image, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise SuperpixelError(
            f"superpixels need an RGB uint8 image of shape (H, W, 3), got {rgb.dtype} {rgb.shape}"
        )
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise SuperpixelError(f"image of shape {rgb.shape} is too small for superpixels")
    return np.ascontiguousarray(rgb)


def relabel_contiguous(labels: npt.NDArray[np.integer]) -> Int32Array:
    """Map any integer label image to ids 0..K-1 (ascending order of the original values)."""
    _, inverse = np.unique(labels, return_inverse=True)
    out: Int32Array = inverse.reshape(labels.shape).astype(np.int32)
    return out


def is_contiguous(labels: npt.NDArray[np.integer]) -> bool:
    """True when ``labels`` uses exactly the ids 0..K-1 (cheap: one bincount)."""
    if labels.size == 0 or int(labels.min()) < 0:
        return False
    return bool(np.all(np.bincount(labels.ravel()) > 0))


@dataclass(frozen=True)
class SeedGrid:
    """scikit-image's SLIC seed grid for an image: rows/cols of initial centres and their spacing."""

    start_y: int
    step_y: int
    n_y: int
    start_x: int
    step_x: int
    n_x: int

    @classmethod
    def for_image(cls, height: int, width: int, n_segments: int) -> SeedGrid:
        sy, sx = regular_grid((height, width), n_segments)
        start_y, step_y = int(sy.start or 0), int(sy.step or 1)
        start_x, step_x = int(sx.start or 0), int(sx.step or 1)
        return cls(
            start_y=start_y,
            step_y=step_y,
            n_y=len(range(start_y, height, step_y)),
            start_x=start_x,
            step_x=step_x,
            n_x=len(range(start_x, width, step_x)),
        )

    @property
    def n_seeds(self) -> int:
        return self.n_y * self.n_x

    @property
    def step(self) -> float:
        """The spatial normaliser S of SLIC's distance (scikit-image uses the larger grid step)."""
        return float(max(self.step_y, self.step_x))


def min_segment_size(height: int, width: int, n_seeds: int, factor: float = 0.5) -> int:
    """scikit-image's ``min_size``: segments smaller than this fraction of the nominal size are merged."""
    return int(factor * height * width / max(n_seeds, 1))
