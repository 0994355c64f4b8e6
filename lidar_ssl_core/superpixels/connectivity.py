"""Connectivity enforcement: every superpixel one 4-connected region, none below a minimum size.

Like scikit-image's SLIC post-processing, a label that falls apart into several regions keeps each
large region as its own segment and merges small ones into a neighbour. Unlike scikit-image (which
merges into whichever neighbour its raster scan met last), a small region joins the neighbour it
shares the longest border with, which is deterministic and does not depend on scan order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import numpy.typing as npt
from skimage.measure import label as _label

from lidar_ssl_core.superpixels._common import Int32Array

_MAX_ROUNDS = 64
# scikit-image ships no type hints; this is the call signature used here (return_num=True)
connected_components = cast(Callable[..., tuple[npt.NDArray[np.intp], int]], _label)


def enforce_connectivity(labels: npt.NDArray[np.integer], min_size: int) -> Int32Array:
    """Return contiguous int32 labels whose segments are 4-connected and (where possible) >= min_size."""
    comp_raw, n_comp = connected_components(labels, background=-1, connectivity=1, return_num=True)
    comp = np.asarray(comp_raw)  # regions numbered 1..n_comp (0 is unused: no pixel equals -1)
    sizes = np.bincount(comp.ravel(), minlength=n_comp + 1).astype(np.int64)
    sizes[0] = min_size  # the unused id 0 is never small
    small0 = sizes < min_size
    if n_comp <= 1 or not small0.any():
        return (comp - 1).astype(np.int32)
    pair_a, pair_b, pair_n = _border_pairs(comp, small0)
    parent = _merge_small(sizes, min_size, pair_a, pair_b, pair_n)
    roots = np.unique(parent[1:])
    new_id = np.full(n_comp + 1, -1, dtype=np.int32)
    new_id[roots] = np.arange(roots.size, dtype=np.int32)
    out: Int32Array = new_id[parent][comp]
    return out


def _border_pairs(
    comp: npt.NDArray[np.integer], small: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(small region, neighbour, border length) for every small region and each region it touches.

    Only the pixels of small regions are visited, so this costs O(small area), not O(image).
    """
    h, w = comp.shape
    flat = comp.ravel()
    pix = np.flatnonzero(small[flat])
    row, col = pix // w, pix % w
    a_parts: list[npt.NDArray[np.int64]] = []
    b_parts: list[npt.NDArray[np.int64]] = []
    for ok, step in ((row > 0, -w), (row < h - 1, w), (col > 0, -1), (col < w - 1, 1)):
        p = pix[ok]
        a, b = flat[p].astype(np.int64), flat[p + step].astype(np.int64)
        keep = a != b
        a_parts.append(a[keep])
        b_parts.append(b[keep])
    a_all = np.concatenate(a_parts)
    b_all = np.concatenate(b_parts)
    return _aggregate(a_all, b_all, np.ones_like(a_all), small.size)


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
