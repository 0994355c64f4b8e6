"""One entry point from the config: method dispatch plus the cache, usable inside DataLoader workers."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.config import SuperpixelConfig, SuperpixelMethod
from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.superpixels.cache import SuperpixelCache
from lidar_ssl_core.superpixels.external import external_mask_path, load_external_mask
from lidar_ssl_core.superpixels.fast import slic_fast
from lidar_ssl_core.superpixels.reference import slic_reference

_ALGORITHM_VERSION = {
    SuperpixelMethod.SLIC: "skimage",
    SuperpixelMethod.FAST: "fast-v1",
    SuperpixelMethod.EXTERNAL: "file",
}


class Superpixelizer:
    """``labels = Superpixelizer(cfg)(rgb, camera=..., stamp_ns=...)``; picklable (holds only settings)."""

    def __init__(self, config: SuperpixelConfig) -> None:
        if config.method is SuperpixelMethod.EXTERNAL and config.mask_dir is None:
            raise ConfigError("data.superpixels.method 'external' needs data.superpixels.mask_dir")
        self.config = config
        # the algorithm version is part of the key: a changed fast path never reads stale entries
        settings = (
            f"{config.method.value}:{_ALGORITHM_VERSION[config.method]}:"
            f"{config.n_segments}:{config.compactness}:{config.sigma}"
        )
        use_cache = config.cache_dir is not None and config.method is not SuperpixelMethod.EXTERNAL
        self.cache = SuperpixelCache(config.cache_dir, settings) if use_cache and config.cache_dir else None

    def __call__(self, rgb: npt.NDArray[np.uint8], *, camera: str, stamp_ns: int) -> npt.NDArray[np.int32]:
        cfg = self.config
        if cfg.method is SuperpixelMethod.EXTERNAL:
            if cfg.mask_dir is None:  # unreachable: checked in __init__; keeps the type checker honest
                raise ConfigError("data.superpixels.method 'external' needs data.superpixels.mask_dir")
            return load_external_mask(external_mask_path(cfg.mask_dir, camera, stamp_ns), rgb.shape[:2])
        shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        if self.cache is not None:
            cached = self.cache.get(camera, stamp_ns, shape)
            if cached is not None:
                return cached
        segment = slic_fast if cfg.method is SuperpixelMethod.FAST else slic_reference
        labels = segment(rgb, cfg.n_segments, cfg.compactness, cfg.sigma)
        if self.cache is not None:
            self.cache.put(camera, stamp_ns, labels)
        return labels
