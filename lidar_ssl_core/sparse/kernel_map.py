"""Neighbour tables ("kernel maps") for sparse 3D convolution, built with plain torch ops.

Coordinates are packed into one int64 key per voxel (16 bits per spatial axis, 15 for the batch
index) so that neighbour search is a single ``sort`` + ``searchsorted`` over all kernel offsets at
once: no Python loop over points, no custom op, and it runs on whatever device the coords live on.
The last axis is the key's lowest bits, so the ``K`` offsets that differ only along it are ``K``
consecutive keys: one search per (first, second)-axis column finds them all (:func:`neighbour_ranks`).

Offset ordering matches spconv 2.x / ``torch.nn.functional.conv3d`` (cross-correlation): kernel
index ``k = (i * K + j) * K + l`` for weight slice ``weight[:, i, j, l, :]``, and that slice reads the
input voxel at ``out + (i, j, l) - K // 2`` (submanifold) or ``stride * out + (i, j, l)`` (strided).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

_AXIS_BITS = 16
_AXIS_OFFSET = 1 << (_AXIS_BITS - 1)
_AXIS_MASK = (1 << _AXIS_BITS) - 1
_MAX_BATCH = (1 << (63 - 3 * _AXIS_BITS)) - 1
COORD_MIN = -_AXIS_OFFSET
COORD_MAX = _AXIS_OFFSET - 1


@dataclass(eq=False)
class KernelMap:
    """Input/output index pairs of one sparse conv, grouped by kernel offset.

    ``in_idx[j]`` contributes to ``out_idx[j]`` through weight slice ``kernel_idx[j]``; pairs are sorted
    by ``kernel_idx`` and ``counts[k]`` says how many pairs offset ``k`` has, so
    ``in_idx.split(counts)`` gives the per-offset tables.
    """

    in_idx: Tensor  # (M,) int64
    out_idx: Tensor  # (M,) int64
    kernel_idx: Tensor  # (M,) int64, non-decreasing
    counts: tuple[int, ...]  # (K,) pairs per kernel offset
    num_in: int
    num_out: int
    _table: Tensor | None = field(default=None, repr=False)

    @property
    def kernel_volume(self) -> int:
        return len(self.counts)

    def transposed(self) -> KernelMap:
        """The same pairs read backwards (used by the inverse conv of a downsampling conv)."""
        return KernelMap(self.out_idx, self.in_idx, self.kernel_idx, self.counts, self.num_out, self.num_in)

    def neighbour_table(self) -> Tensor:
        """Dense (num_out, K) table of input rows, ``num_in`` where a neighbour is missing.

        Lets a conv be one gather + one GEMM (im2col) instead of K gather/GEMM/scatter steps.
        """
        if self._table is None:
            table = torch.full(
                (self.num_out, self.kernel_volume), self.num_in, dtype=torch.int64, device=self.in_idx.device
            )
            table[self.out_idx, self.kernel_idx] = self.in_idx
            self._table = table
        return self._table


def _check_coords(coords: Tensor, margin: int = 0) -> None:
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must have shape (N, 4) [batch, x, y, z], got {tuple(coords.shape)}")
    if coords.dtype.is_floating_point or coords.dtype == torch.bool:
        raise ValueError(f"coords must be an integer tensor, got {coords.dtype}")
    if coords.shape[0] == 0:
        return
    lo = int(coords[:, 1:].min())
    hi = int(coords[:, 1:].max())
    if lo - margin < COORD_MIN or hi + margin > COORD_MAX:
        raise ValueError(
            f"voxel coordinates span [{lo}, {hi}] (plus kernel margin {margin}), outside the packable "
            f"range [{COORD_MIN}, {COORD_MAX}]; use a larger voxel size or crop the cloud"
        )
    b_lo = int(coords[:, 0].min())
    b_hi = int(coords[:, 0].max())
    if b_lo < 0 or b_hi > _MAX_BATCH:
        raise ValueError(f"batch indices span [{b_lo}, {b_hi}], must lie in [0, {_MAX_BATCH}]")


def pack_keys(batch: Tensor, xyz: Tensor) -> Tensor:
    """Pack batch (...,) and xyz (..., 3) integer coords into one sortable int64 key per voxel."""
    b = batch.to(torch.int64)
    p = xyz.to(torch.int64) + _AXIS_OFFSET
    return (b << (3 * _AXIS_BITS)) | (p[..., 0] << (2 * _AXIS_BITS)) | (p[..., 1] << _AXIS_BITS) | p[..., 2]


def key_deltas(offsets: Tensor) -> Tensor:
    """(K,) int64 key differences of (K, 3) offsets: ``pack_keys(b, c + d) == pack_keys(b, c) + delta(d)``
    while every axis of ``c + d`` stays inside its 16 bits, so a neighbour query is one add, not a repack."""
    zeros = torch.zeros_like(offsets[:, 0], dtype=torch.int64)
    return pack_keys(zeros, offsets) - pack_keys(zeros, torch.zeros_like(offsets))


def unpack_keys(keys: Tensor) -> Tensor:
    """Inverse of :func:`pack_keys`: (N,) int64 keys -> (N, 4) int32 [batch, x, y, z]."""
    out = torch.stack(
        [
            keys >> (3 * _AXIS_BITS),
            ((keys >> (2 * _AXIS_BITS)) & _AXIS_MASK) - _AXIS_OFFSET,
            ((keys >> _AXIS_BITS) & _AXIS_MASK) - _AXIS_OFFSET,
            (keys & _AXIS_MASK) - _AXIS_OFFSET,
        ],
        dim=1,
    )
    return out.to(torch.int32)


def kernel_offsets(kernel_size: int, device: torch.device | None = None, centred: bool = True) -> Tensor:
    """(K**3, 3) int64 offsets in weight order (first spatial axis slowest)."""
    r = torch.arange(kernel_size, dtype=torch.int64, device=device)
    if centred:
        r = r - kernel_size // 2
    grid = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)


def neighbour_ranks(keys: Tensor, sorted_keys: Tensor, kernel_size: int) -> tuple[Tensor, Tensor]:
    """For each voxel key (N,) and each of the ``kernel_size**3`` centred offsets in weight order:
    whether that neighbour exists (``hit`` (K, N) bool) and its rank in ``sorted_keys`` (``rank`` (K, N)
    int64, meaningful where ``hit``).

    Offsets differing only along the last axis are consecutive keys, and existing keys in such a run
    occupy consecutive ranks, so one ``searchsorted`` per column (``kernel_size**2`` instead of
    ``kernel_size**3``) finds the first of them and each next one is a compare at the previous rank (+1
    where it was found). The same ranks as searching every offset; keys must be unique and every
    neighbour packable (checked by the callers). On the CPU it runs in numpy (its searchsorted and
    fancy indexing are ~1.5-2x torch's on these int64 arrays), elsewhere in torch on the keys' device.
    """
    n = sorted_keys.shape[0]
    columns = kernel_offsets(kernel_size, keys.device)[::kernel_size]  # (k*k, 3), last axis at -k//2
    query_t = keys[None, :] + key_deltas(columns)[:, None]  # (k*k, N)
    end = torch.full((1,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=keys.device)
    padded_t = torch.cat([sorted_keys, end])  # rank n (past every key) reads a key no query equals
    shape = (columns.shape[0], kernel_size, n)
    query: Any
    padded: Any
    if keys.device.type == "cpu":
        query, padded = query_t.numpy(), padded_t.numpy()
        rank: Any = np.searchsorted(padded[:n], query)
        hits: Any = np.empty(shape, dtype=np.bool_)
        ranks: Any = np.empty(shape, dtype=np.int64)
    else:
        query, padded = query_t, padded_t
        rank = torch.searchsorted(sorted_keys, query)
        hits = torch.empty(shape, dtype=torch.bool, device=keys.device)
        ranks = torch.empty(shape, dtype=torch.int64, device=keys.device)
    for i in range(kernel_size):  # along the last axis, all columns at once
        ranks[:, i] = rank
        hits[:, i] = padded[rank] == query
        if i + 1 < kernel_size:
            rank = rank + hits[:, i]
            query = query + 1
    if isinstance(hits, np.ndarray):
        return torch.from_numpy(hits.reshape(-1, n)), torch.from_numpy(ranks.reshape(-1, n))
    return hits.reshape(-1, n), ranks.reshape(-1, n)


def _group_by_kernel(
    in_idx: Tensor, out_idx: Tensor, kernel_idx: Tensor, volume: int, num_in: int, num_out: int
) -> KernelMap:
    order = torch.argsort(kernel_idx, stable=True)
    kernel_idx = kernel_idx[order]
    counts = torch.bincount(kernel_idx, minlength=volume)
    return KernelMap(
        in_idx[order], out_idx[order], kernel_idx, tuple(int(c) for c in counts.tolist()), num_in, num_out
    )


def build_submanifold_map(coords: Tensor, kernel_size: int) -> KernelMap:
    """Map of a submanifold conv: outputs are the input sites, each reading its K**3 neighbourhood."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"submanifold kernel_size must be odd and >= 1, got {kernel_size}")
    _check_coords(coords, margin=kernel_size // 2)
    n = coords.shape[0]
    volume = kernel_size**3
    coords = coords.to(torch.int64)
    keys = pack_keys(coords[:, 0], coords[:, 1:])
    sorted_keys, perm = torch.sort(keys)
    if n > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        raise ValueError("coords contain duplicate voxels; merge them (e.g. voxelise with unique) first")
    empty = torch.empty(0, dtype=torch.int64, device=coords.device)
    if n == 0:
        return KernelMap(empty, empty, empty, (0,) * volume, 0, 0)
    if kernel_size == 1:
        idx = torch.arange(n, device=coords.device)
        return KernelMap(idx, idx, torch.zeros_like(idx), (n,), n, n)
    hit, rank = neighbour_ranks(keys, sorted_keys, kernel_size)  # (K, N); the margin was checked above
    kernel_idx, out_idx = hit.nonzero(as_tuple=True)  # row-major: already grouped by kernel offset
    in_idx = perm[rank[kernel_idx, out_idx]]
    counts = hit.sum(dim=1)
    return KernelMap(in_idx, out_idx, kernel_idx, tuple(int(c) for c in counts.tolist()), n, n)


def build_downsample_map(coords: Tensor, stride: int) -> tuple[KernelMap, Tensor]:
    """Map of a strided conv with kernel_size == stride; returns (map, output coords).

    Output sites are ``unique(floor(coords / stride))`` (as MinkowskiEngine and spconv's
    ``SparseConv3d(k, k, stride=k)`` on a grid whose size is a multiple of ``stride``); each input
    voxel feeds exactly one output through offset ``coords - stride * out``.
    Output rows are sorted by packed (batch, x, y, z) key.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    _check_coords(coords)
    n = coords.shape[0]
    coords = coords.to(torch.int64)
    coarse = torch.div(coords[:, 1:], stride, rounding_mode="floor")
    local = coords[:, 1:] - coarse * stride  # in [0, stride)
    keys = pack_keys(coords[:, 0], coarse)
    out_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    kernel_idx = (local[:, 0] * stride + local[:, 1]) * stride + local[:, 2]
    in_idx = torch.arange(n, dtype=torch.int64, device=coords.device)
    kmap = _group_by_kernel(in_idx, inverse, kernel_idx, stride**3, n, int(out_keys.shape[0]))
    return kmap, unpack_keys(out_keys)
