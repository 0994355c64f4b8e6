"""Kernel maps of the whole U-Net, built once per scan before the network runs (the second hot path).

Everything is vectorised torch (sort + searchsorted over packed keys, no Python loop over points) and runs
on the device the coordinates live on: CPU here, CUDA on the vehicle. Two forms:

- :func:`portable_cache`: the :class:`~lidar_ssl_core.sparse.KernelMapCache` the eager portable network
  would build lazily, built up front so the engine can time it apart from the network;
- :func:`graph_tables`: the neighbour tables the exported graph (ONNX Runtime, TensorRT) takes as
  inputs. Per conv kind and level, one gather list per kernel offset (input rows feeding that offset,
  plus a trailing sentinel that reads the zero pad row) and one position table saying where each
  output's contributions lie in the concatenation of the per-offset products. The graph then is
  ``Y_k = X[g_k] @ W_k`` (exact FLOPs, no wasted products for empty neighbours) and
  ``out = sum(Y[pos], axis=1)``, or, for a graph that scatters, ``out[owner_k] += Y_k`` per offset with
  ``owner_k`` the output row of every product row (see :mod:`lidar_ssl_core.deploy.onnx_graph`).

Levels are the U-Net's tensor strides 1, 2, 4, 8, 16; output rows of a downsampling are sorted by packed
key exactly as :func:`~lidar_ssl_core.sparse.build_downsample_map` sorts them, so both forms agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lidar_ssl_core.sparse import KernelMapCache, build_downsample_map, build_submanifold_map
from lidar_ssl_core.sparse.kernel_map import COORD_MAX, neighbour_ranks, pack_keys, unpack_keys

#: tensor strides of the Res16UNet levels
LEVELS = (1, 2, 4, 8, 16)
SUBM_VOLUME = 27
SUBM_CENTRE = 13
DOWN_VOLUME = 8


def portable_cache(coords: Tensor) -> KernelMapCache:
    """Every map the portable Res16UNet needs for ``coords`` (V, 4) int32 [batch, c0, c1, c2]."""
    cache = KernelMapCache()
    current = coords.to(torch.int32)
    cache.coords[1] = current
    for stride in LEVELS:
        cache.maps[("subm", stride, 3)] = build_submanifold_map(current, 3)
        if stride == LEVELS[-1]:
            break
        kmap, coarse = build_downsample_map(current, 2)
        cache.maps[("down", stride, 2)] = kmap
        cache.coords[stride * 2] = coarse
        current = coarse
    return cache


@dataclass(frozen=True)
class OffsetLists:
    """Gather lists of one conv kind at one level: ``flat`` split into ``sizes`` (each ends in a sentinel)."""

    flat: Tensor  # (sum(sizes),) int32
    sizes: tuple[int, ...]
    owner: Tensor | None = None  # (sum(sizes), 1) int64: output row of each product row (sentinel: V)

    def lists(self) -> tuple[Tensor, ...]:
        return tuple(torch.split(self.flat, list(self.sizes)))


@dataclass(frozen=True)
class GraphTables:
    """Inputs of the exported graph for one scan (all int32, on the coordinates' device)."""

    num_voxels: dict[int, int]  # stride -> voxel count
    subm: dict[int, tuple[OffsetLists, Tensor]]  # stride -> (26 lists, pos (V, 26))
    down: dict[int, tuple[OffsetLists, Tensor]]  # fine stride -> (8 lists, pos (V_coarse, 8))
    up: dict[int, tuple[OffsetLists, Tensor]]  # fine stride -> (8 lists, pos (V_fine,))

    def feeds(self) -> dict[str, Tensor]:
        """name -> tensor, as :func:`lidar_ssl_core.deploy.onnx_graph.input_names` names them."""
        out: dict[str, Tensor] = {}
        for kind, table in (("s", self.subm), ("d", self.down), ("u", self.up)):
            for stride, (lists, pos) in table.items():
                for k, g in enumerate(lists.lists()):
                    out[f"{kind}{stride}_g{k}"] = g
                out[f"{kind}{stride}_pos"] = pos
                if lists.owner is not None:
                    for k, o in enumerate(torch.split(lists.owner, list(lists.sizes))):
                        out[f"{kind}{stride}_o{k}"] = o
        return out


def _positions(group: Tensor, volume: int) -> tuple[Tensor, Tensor]:
    """For items with small group ids ``group`` (n,): the group sizes, and each item's row in the
    concatenation of the groups (items in index order within a group, one sentinel row after each).
    A one-hot running count instead of a sort: ``volume`` is 8."""
    onehot = torch.nn.functional.one_hot(group, volume)
    within = torch.cumsum(onehot, dim=0).gather(1, group[:, None])[:, 0] - 1
    counts = onehot.sum(dim=0)
    sizes = counts + 1
    starts = torch.cumsum(sizes, 0) - sizes
    return counts, starts[group] + within


def _subm(coords: Tensor, form: str) -> tuple[OffsetLists, Tensor]:
    """Submanifold 3x3x3 lists and position table at one level (coords (V, 3) int64, unique)."""
    n = coords.shape[0]
    dev = coords.device
    keys = pack_keys(torch.zeros(n, dtype=torch.int64, device=dev), coords)
    sorted_keys, perm = torch.sort(keys)
    hit, rank = neighbour_ranks(keys, sorted_keys, 3)  # (27, V), the shared search of the portable maps
    hit[SUBM_CENTRE] = False  # the centre is X @ W_c
    kernel_idx, out_idx = hit.nonzero(as_tuple=True)  # row-major: grouped by offset, outputs ascending
    k_idx = kernel_idx - (kernel_idx > SUBM_CENTRE).long()  # list index among the 26 non-centre offsets
    counts = torch.bincount(k_idx, minlength=SUBM_VOLUME - 1)
    row = torch.arange(k_idx.shape[0], device=dev) + k_idx  # one sentinel row after each group
    # the scatter form needs no position table (only its row count is read): a (V, 0) placeholder
    pos = torch.full(
        (n, SUBM_VOLUME - 1 if form == "gather" else 0), int(counts[0]), dtype=torch.int32, device=dev
    )
    if form == "gather":
        pos[out_idx, k_idx] = row.to(torch.int32)  # group 0's sentinel row (a zero product) where no hit
    flat = torch.full((k_idx.shape[0] + SUBM_VOLUME - 1,), n, dtype=torch.int32, device=dev)
    flat[row] = perm[rank[kernel_idx, out_idx]].to(torch.int32)
    sizes = tuple(int(c) + 1 for c in counts.tolist())
    if form == "gather":
        return OffsetLists(flat, sizes), pos
    owner = torch.full((flat.shape[0], 1), n, dtype=torch.int64, device=dev)  # sentinels: the dump row
    owner[row, 0] = out_idx
    return OffsetLists(flat, sizes, owner), pos


def _down(coords: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Parent (n,), kernel offset (n,) of every fine voxel, coarse coords (sorted by key), coarse count."""
    coarse = torch.div(coords, 2, rounding_mode="floor")
    local = coords - coarse * 2
    zeros = torch.zeros(coords.shape[0], dtype=torch.int64, device=coords.device)
    out_keys, parent = torch.unique(pack_keys(zeros, coarse), sorted=True, return_inverse=True)
    k = (local[:, 0] * 2 + local[:, 1]) * 2 + local[:, 2]
    return parent, k, unpack_keys(out_keys)[:, 1:].to(torch.int64), int(out_keys.shape[0])


def graph_tables(coords: Tensor, form: str = "gather") -> GraphTables:
    """All graph inputs except the features, for level-1 coords (V, 3) or (V, 4) (batch column dropped).

    ``form``: ``"gather"`` builds the position tables the gather-sum graph reads (TensorRT),
    ``"scatter"`` the per-offset output rows the scatter-add graph reads (ONNX Runtime)."""
    current = (coords[:, 1:] if coords.shape[1] == 4 else coords).to(torch.int64)
    if current.numel() and int(current.abs().max()) >= COORD_MAX:  # the packed keys' linearity needs it
        raise ValueError(f"voxel coordinates reach {int(current.abs().max())}, beyond +-{COORD_MAX - 1}")
    subm: dict[int, tuple[OffsetLists, Tensor]] = {}
    down: dict[int, tuple[OffsetLists, Tensor]] = {}
    up: dict[int, tuple[OffsetLists, Tensor]] = {}
    counts_by_level: dict[int, int] = {}
    for stride in LEVELS:
        n = current.shape[0]
        counts_by_level[stride] = n
        subm[stride] = _subm(current, form)
        if stride == LEVELS[-1]:
            break
        parent, k, coarse, n_coarse = _down(current)
        counts, slot = _positions(k, DOWN_VOLUME)
        sizes = counts + 1
        fine_flat = torch.full((int(sizes.sum()),), n, dtype=torch.int64, device=k.device)
        fine_flat[slot] = torch.arange(n, device=k.device)
        parent_flat = torch.full_like(fine_flat, n_coarse)
        parent_flat[slot] = parent
        down_pos = torch.full((n_coarse, DOWN_VOLUME), int(counts[0]), dtype=torch.int64, device=k.device)
        down_pos[parent, k] = slot
        size_t = tuple(int(s) for s in sizes.tolist())
        owner = None
        if form == "scatter":
            owner = torch.full((fine_flat.shape[0], 1), n_coarse, dtype=torch.int64, device=k.device)
            owner[slot, 0] = parent
        down[stride] = (OffsetLists(fine_flat.to(torch.int32), size_t, owner), down_pos.to(torch.int32))
        up[stride] = (OffsetLists(parent_flat.to(torch.int32), size_t), slot.to(torch.int32))
        current = coarse
    return GraphTables(counts_by_level, subm, down, up)
