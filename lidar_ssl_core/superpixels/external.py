"""Superpixels made elsewhere (e.g. SAM masks), read from files.

Convention: ``<mask_dir>/<camera>/<stamp_ns>.png`` (8- or 16-bit label image) or ``.npy`` (integer
array, loaded without pickle), where the training dataset asks with camera = ``<bag name>/<camera>``,
i.e. ``<mask_dir>/<bag>/<camera>/<image stamp ns>.png``. Ids are relabelled to 0..K-1; a mask must
have the size of the decoded image.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import SuperpixelError
from lidar_ssl_core.fileio import image_keyed_file
from lidar_ssl_core.superpixels._common import relabel_contiguous


def external_mask_path(mask_dir: Path, camera: str, stamp_ns: int) -> Path:
    """The mask file of one image; SuperpixelError naming the paths tried when there is none."""
    found, base = image_keyed_file(mask_dir, camera, stamp_ns)
    if found is not None:
        return found
    raise SuperpixelError(
        f"no external superpixel mask for camera {camera} at {stamp_ns}: expected {base}.png or .npy"
    )


def load_external_mask(path: Path, expected_hw: tuple[int, int]) -> npt.NDArray[np.int32]:
    """Read a label mask, check its size against the image's, relabel to contiguous ids."""
    path = Path(path)
    if not path.is_file():
        raise SuperpixelError(f"external superpixel mask {path} does not exist")
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise SuperpixelError(
                f"external superpixel mask {path} is not a readable .npy array: {err}"
            ) from err
    else:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise SuperpixelError(f"external superpixel mask {path} is not a readable image")
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise SuperpixelError(
            f"external superpixel mask {path} must be a 2-D integer label image, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.shape != tuple(expected_hw):
        raise SuperpixelError(
            f"external superpixel mask {path} is {labels.shape[1]}x{labels.shape[0]} but the image is "
            f"{expected_hw[1]}x{expected_hw[0]} (width x height)"
        )
    return relabel_contiguous(labels)
