"""Portable sparse 3D convolution in pure PyTorch (CPU training, any device, spconv-compatible weights)."""

from __future__ import annotations

from lidar_ssl_core.sparse.conv import SparseConv3d, SparseInverseConv3d, SubMConv3d, sparse_conv_features
from lidar_ssl_core.sparse.kernel_map import (
    KernelMap,
    build_downsample_map,
    build_submanifold_map,
    kernel_offsets,
    pack_keys,
    unpack_keys,
)
from lidar_ssl_core.sparse.tensor import KernelMapCache, SparseTensor

__all__ = [
    "KernelMap",
    "KernelMapCache",
    "SparseConv3d",
    "SparseInverseConv3d",
    "SparseTensor",
    "SubMConv3d",
    "build_downsample_map",
    "build_submanifold_map",
    "kernel_offsets",
    "pack_keys",
    "sparse_conv_features",
    "unpack_keys",
]
