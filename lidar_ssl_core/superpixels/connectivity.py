"""Connectivity enforcement: every superpixel one 4-connected region, none below a minimum size.

Like scikit-image's SLIC post-processing, a label that falls apart into several regions keeps each
large region as its own segment and merges small ones into a neighbour. Unlike scikit-image (which
merges into whichever neighbour its raster scan met last), a small region joins the neighbour it
shares the longest border with, which is deterministic and does not depend on scan order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from skimage.measure import label as connected_components

from lidar_ssl_core.superpixels._common import Int32Array

_MAX_ROUNDS = 64


def enforce_connectivity(labels: npt.NDArray[np.integer], min_size: int) -> Int32Array:
    """Return contiguous int32 labels whose segments are 4-connected and (where possible) >= min_size."""
    comp_raw, n_comp = connected_components(labels, background=-1, connectivity=1, return_num=True)
    comp = np.asarray(comp_raw, dtype=np.int32)
    comp -= 1  # connected_components numbers regions from 1
    sizes = np.bincount(comp.ravel(), minlength=n_comp).astype(np.int64)
    small0 = sizes < min_size
    if n_comp <= 1 or not small0.any():
        return comp
    pair_a, pair_b, pair_n = _border_pairs(comp, small0)
    parent = _merge_small(sizes, min_size, pair_a, pair_b, pair_n)
    roots = np.unique(parent)
    new_id = np.full(n_comp, -1, dtype=np.int32)
    new_id[roots] = np.arange(roots.size, dtype=np.int32)
    return new_id[parent][comp]


def _border_pairs(
    comp: Int32Array, small: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Directed (a, b, border length) for every pair of touching regions where one of them is small."""
    small_px = small[comp]
    a_parts: list[npt.NDArray[np.int32]] = []
    b_parts: list[npt.NDArray[np.int32]] = []
    for first, second, s1, s2 in (
        (comp[:, :-1], comp[:, 1:], small_px[:, :-1], small_px[:, 1:]),
        (comp[:-1, :], comp[1:, :], small_px[:-1, :], small_px[1:, :]),
    ):
        keep = (first != second) & (s1 | s2)
        a_parts.append(first[keep])
        b_parts.append(second[keep])
    a = np.concatenate(a_parts).astype(np.int64)
    b = np.concatenate(b_parts).astype(np.int64)
    a, b = np.concatenate([a, b]), np.concatenate([b, a])
    return _aggregate(a, b, np.ones_like(a), int(comp.max()) + 1)


def _aggregate(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], n: npt.NDArray[np.int64], n_comp: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    code = a * n_comp + b
    uniq, inverse = np.unique(code, return_inverse=True)
    counts = np.bincount(inverse, weights=n).astype(np.int64)
    return uniq // n_comp, uniq % n_comp, counts


def _merge_small(
    sizes: npt.NDArray[np.int64],
    min_size: int,
    pair_a: npt.NDArray[np.int64],
    pair_b: npt.NDArray[np.int64],
    pair_n: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Union small regions into their longest-border neighbour; returns each region's final root.

    A small region may only point at a region that is large or ranks higher by (size, id), so the
    pointers form a forest and chains resolve by pointer jumping. The lowest-ranked small region can
    always merge, so every round makes progress.
    """
    n_comp = sizes.size
    parent = np.arange(n_comp, dtype=np.int64)
    size = sizes.copy()
    for _ in range(_MAX_ROUNDS):
        small = size < min_size
        small[parent != np.arange(n_comp)] = False  # only roots are live regions
        if not small.any() or pair_a.size == 0:
            break
        sel = small[pair_a]
        a, b, n = pair_a[sel], pair_b[sel], pair_n[sel]
        if a.size == 0:
            break
        # best neighbour per small region: longest border, then smallest id
        order = np.lexsort((b, -n, a))
        a, b = a[order], b[order]
        first = np.ones(a.size, dtype=bool)
        first[1:] = a[1:] != a[:-1]
        a, b = a[first], b[first]
        allowed = ~small[b] | (size[b] > size[a]) | ((size[b] == size[a]) & (b > a))
        a, b = a[allowed], b[allowed]
        if a.size == 0:
            break
        step = np.arange(n_comp, dtype=np.int64)
        step[a] = b
        while True:
            nxt = step[step]
            if np.array_equal(nxt, step):
                break
            step = nxt
        parent = step[parent]
        size = np.bincount(step, weights=size, minlength=n_comp).astype(np.int64)
        pair_a, pair_b = step[pair_a], step[pair_b]
        keep = pair_a != pair_b
        pair_a, pair_b, pair_n = _aggregate(pair_a[keep], pair_b[keep], pair_n[keep], n_comp)
    return parent
