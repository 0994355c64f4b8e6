"""Weak semantic labels per camera image (OLIVINE), made offline by a vision foundation model.

Nothing here runs a model or downloads anything: the user segments the images beforehand (SEEM,
Grounded-SAM, ... with the class prompts) and writes one label image per camera image, keyed like the
superpixel cache and external masks:

    <mask_dir>/<bag name>/<camera>/<image stamp ns>.png     (8-bit; or .npy integer array, no pickle)

Pixel values are class ids 0..254; 255 means "no label" (nothing prompted there, or the model abstained).
Ids are used as they are (not relabelled): the same id must mean the same class in every image. A mask of
another size than the decoded image (``data.loader.image_scale``) is resized with nearest neighbours.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.data.sample import NO_LABEL
from lidar_ssl_core.errors import DatasetError

SUFFIXES = (".png", ".npy")


def mask_path(mask_dir: Path, camera: str, stamp_ns: int) -> Path:
    """The weak-label file of one image; DatasetError naming the paths tried when there is none."""
    base = Path(mask_dir) / camera / str(stamp_ns)
    for suffix in SUFFIXES:
        candidate = base.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise DatasetError(f"no weak-label mask for camera {camera} at {stamp_ns}: expected {base}.png or .npy")


def read_mask(path: Path) -> npt.NDArray[np.uint8]:
    """A weak-label file as uint8 class ids (255 = no label); DatasetError when unreadable or out of range."""
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DatasetError(f"weak-label mask {path} is not a readable .npy array: {err}") from err
    else:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise DatasetError(f"weak-label mask {path} is not a readable image")
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"weak-label mask {path} must be a 2-D integer image, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > NO_LABEL):
        raise DatasetError(f"weak-label mask {path} has values outside 0..{NO_LABEL}")
    out: npt.NDArray[np.uint8] = labels.astype(np.uint8)
    return out


class MaskFiles:
    """A weak-label source for :class:`~lidar_ssl_core.data.dataset.PairedBagDataset` (``weak_labels=``)."""

    def __init__(self, mask_dir: Path) -> None:
        self.mask_dir = Path(mask_dir)
        if not self.mask_dir.is_dir():
            raise DatasetError(f"weak-label folder {self.mask_dir} does not exist")

    def __call__(self, rgb: npt.NDArray[np.uint8], *, camera: str, stamp_ns: int) -> npt.NDArray[np.uint8]:
        labels = read_mask(mask_path(self.mask_dir, camera, stamp_ns))
        height, width = rgb.shape[:2]
        if labels.shape != (height, width):
            labels = np.asarray(
                cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST), np.uint8
            )
        return labels
