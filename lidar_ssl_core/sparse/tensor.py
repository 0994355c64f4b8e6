"""The sparse tensor record passed between sparse conv layers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lidar_ssl_core.sparse.kernel_map import KernelMap

MapKey = tuple[str, int, int]


@dataclass(eq=False)
class KernelMapCache:
    """Kernel maps and per-stride coordinates shared by every tensor of one forward pass.

    Keys are ``(kind, tensor_stride, kernel_size)`` with kind ``"subm"`` or ``"down"``; a map is built
    the first time a layer needs it and reused by every later layer at the same stride, and the
    inverse conv finds the finer coordinates and the downsampling map it must undo here. This
    replaces spconv's ``indice_key`` strings: the stride alone identifies the level of a U-Net.
    """

    maps: dict[MapKey, KernelMap] = field(default_factory=dict)
    coords: dict[int, Tensor] = field(default_factory=dict)


@dataclass(eq=False)
class SparseTensor:
    """Features (N, C) float at voxel coords (N, 4) int32 ``[batch, x, y, z]`` of a grid with ``stride``.

    Coordinates are in units of the current level (level ``s`` voxel ``c`` covers input voxels
    ``s * c .. s * c + s - 1``); they must be unique per batch item.
    """

    features: Tensor
    coords: Tensor
    stride: int = 1
    cache: KernelMapCache = field(default_factory=KernelMapCache)

    def __post_init__(self) -> None:
        if self.features.ndim != 2:
            raise ValueError(f"features must have shape (N, C), got {tuple(self.features.shape)}")
        if self.coords.ndim != 2 or self.coords.shape[1] != 4:
            raise ValueError(
                f"coords must have shape (N, 4) [batch, x, y, z], got {tuple(self.coords.shape)}"
            )
        if self.coords.shape[0] != self.features.shape[0]:
            raise ValueError(
                f"features has {self.features.shape[0]} rows but coords has {self.coords.shape[0]}"
            )
        if self.coords.dtype != torch.int32:
            self.coords = self.coords.to(torch.int32)
        known = self.cache.coords.setdefault(self.stride, self.coords)
        if known is not self.coords and known.shape != self.coords.shape:
            raise ValueError(
                f"the cache already holds {known.shape[0]} coords at stride {self.stride} but this "
                f"tensor has {self.coords.shape[0]}; use a fresh SparseTensor (new cache) for a new input"
            )

    @property
    def num_channels(self) -> int:
        return int(self.features.shape[1])

    def replace_features(self, features: Tensor) -> SparseTensor:
        """Same sites, stride and cache with new features (for BN, activations, residual adds)."""
        return SparseTensor(features, self.coords, self.stride, self.cache)
