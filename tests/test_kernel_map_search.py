"""The column-wise neighbour search of the kernel maps equals a plain dictionary lookup on real scans.

``sparse.kernel_map.neighbour_ranks`` searches once per (x, y) column and walks along z by compares; the
reference here looks every (voxel, offset) up in a Python dict of coordinate tuples, so it shares no code
with the packed keys or the search.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from lidar_ssl_core.config import VoxelConfig
from lidar_ssl_core.downstream.data import network_input
from lidar_ssl_core.sparse import build_downsample_map, build_submanifold_map


def _reference(coords: Tensor, kernel_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(in_idx, out_idx, kernel_idx) of a submanifold conv, offsets in weight order, outputs ascending."""
    rows = [tuple(c) for c in coords.tolist()]
    index = {c: i for i, c in enumerate(rows)}
    r = kernel_size // 2
    steps = range(-r, r + 1)
    ins: list[int] = []
    outs: list[int] = []
    ks: list[int] = []
    k = 0
    for dx in steps:
        for dy in steps:
            for dz in steps:
                for o, (b, x, y, z) in enumerate(rows):
                    i = index.get((b, x + dx, y + dy, z + dz))
                    if i is not None:
                        ins.append(i)
                        outs.append(o)
                        ks.append(k)
                k += 1
    return torch.tensor(ins), torch.tensor(outs), torch.tensor(ks)


def _assert_matches_reference(coords: Tensor, kernel_size: int) -> None:
    kmap = build_submanifold_map(coords, kernel_size)
    ins, outs, ks = _reference(coords, kernel_size)
    assert kmap.in_idx.shape == ins.shape, f"{kmap.in_idx.shape[0]} pairs, the reference has {ins.shape[0]}"
    assert torch.equal(kmap.kernel_idx, ks)
    assert torch.equal(kmap.out_idx, outs)
    assert torch.equal(kmap.in_idx, ins)
    assert kmap.counts == tuple(int(c) for c in torch.bincount(ks, minlength=kernel_size**3).tolist())


def _scan_coords(points: np.ndarray) -> Tensor:
    coords = network_input(points[:, :3], points[:, 3], VoxelConfig()).coords
    out = torch.zeros((len(coords), 4), dtype=torch.int32)
    out[:, 1:] = torch.from_numpy(np.asarray(coords))
    return out


def _coarser(coords: Tensor, times: int) -> Tensor:
    for _ in range(times):
        _, coords = build_downsample_map(coords, 2)
    return coords


def test_search_matches_a_dict_lookup_on_a_nuscenes_scan(nuscenes_root: Path) -> None:
    path = sorted((nuscenes_root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[0]
    coords = _scan_coords(np.fromfile(path, np.float32).reshape(-1, 5))
    assert len(coords) > 10_000 and int(coords[:, 1:].min()) < 0  # negative coords: keys cross zero
    _assert_matches_reference(coords, 3)
    _assert_matches_reference(_coarser(coords, 2), 5)  # level 4, a 5x5x5 kernel: five compares per column


def test_search_matches_a_dict_lookup_on_a_semantickitti_scan(semantickitti_root: Path) -> None:
    path = semantickitti_root / "sequences" / "00" / "velodyne" / "000000.bin"
    coords = _coarser(_scan_coords(np.fromfile(path, np.float32).reshape(-1, 4)), 1)  # level 2
    assert len(coords) > 10_000
    _assert_matches_reference(coords, 3)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_search_on_full_columns_batches_and_grid_edges(kernel_size: int) -> None:
    """Dense z runs (every neighbour of a column present), two batch items, the largest key's upper
    neighbours past the end of the sorted keys, and coordinates at the packable range's edges."""
    g = torch.Generator().manual_seed(3)
    cube = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sparse = torch.randint(-6, 10, (200, 3), generator=g)
    edge = torch.tensor([[32765, -32766, 32765], [32765, -32766, 32764], [-32766, 32765, -32766]])
    xyz = torch.cat([cube, sparse, edge])
    both = torch.cat([torch.cat([torch.full((len(xyz), 1), b), xyz], 1) for b in (0, 1)])
    coords = torch.from_numpy(np.unique(both.numpy(), axis=0))
    coords = coords[torch.randperm(len(coords), generator=g)].to(torch.int32)
    _assert_matches_reference(coords, kernel_size)
