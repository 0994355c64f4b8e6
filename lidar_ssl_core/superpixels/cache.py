"""Per-image superpixel cache: 16-bit PNGs written atomically, keyed by image + settings.

Superpixels are the most expensive per-image step, yet depend only on the image and the settings, so
they are computed once per image and reused every epoch (the reference code precomputes them for the
whole dataset up front; a cache fills itself as training goes).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import SuperpixelError
from lidar_ssl_core.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


class SuperpixelCache:
    """Label maps under ``directory/<camera>/<stamp_ns>_<settings hash>.png``."""

    def __init__(self, directory: Path, settings: str) -> None:
        self.directory = Path(directory)
        self.tag = hashlib.sha1(settings.encode()).hexdigest()[:10]

    def path(self, camera: str, stamp_ns: int) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in camera)
        return self.directory / safe / f"{stamp_ns}_{self.tag}.png"

    def get(self, camera: str, stamp_ns: int, shape: tuple[int, int]) -> npt.NDArray[np.int32] | None:
        """The cached map, or None when absent, unreadable or of another size (then it is recomputed)."""
        path = self.path(camera, stamp_ns)
        if not path.is_file():
            return None
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if labels is None or labels.shape != shape or labels.dtype != np.uint16:
            log.warning("superpixel cache entry %s is corrupt or stale; recomputing it", path)
            return None
        return labels.astype(np.int32)

    def put(self, camera: str, stamp_ns: int, labels: npt.NDArray[np.integer]) -> None:
        if labels.size and int(labels.max()) > np.iinfo(np.uint16).max:
            raise SuperpixelError(f"{int(labels.max()) + 1} superpixels do not fit a 16-bit cache entry")
        path = self.path(camera, stamp_ns)
        ok, png = cv2.imencode(".png", labels.astype(np.uint16))
        if not ok:
            raise SuperpixelError(f"could not encode superpixel cache entry {path}")
        atomic_write_bytes(path, png.tobytes())
