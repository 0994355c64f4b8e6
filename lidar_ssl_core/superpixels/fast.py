"""Fast SLIC: scikit-image's algorithm run coarse-to-fine, vectorised with numpy/OpenCV.

Why coarse-to-fine: with SLidR's settings (150 segments on a 1600x900 image) a superpixel is ~100 px
wide, so the k-means clustering itself needs nowhere near full resolution. We

1. smooth (Gaussian, ``sigma``) and convert to CIELAB at full resolution, as scikit-image does, and
   build a 2x-per-level pyramid of that image;
2. run SLIC's k-means on the coarsest level that still has >= ``min_block`` pixels per grid step,
   with scikit-image's seed grid, distance ``|lab|^2 / compactness^2 + |xy|^2 / S^2`` (xy in full-
   resolution pixels) and search window (+-2 grid steps). Pixels are grouped by seed cell so each
   group is compared only with the 5x5 neighbouring centres, as one batched matrix product;
3. enforce connectivity there, then upsample the labels level by level, each time re-assigning the
   pixels on a label border to the best of their 4-neighbours' segments under the same distance,
   which puts the borders back on full-resolution image edges;
4. enforce connectivity again at full resolution (no fragments, segments >= half the nominal size).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import SuperpixelError
from lidar_ssl_core.superpixels._common import (
    Int32Array,
    SeedGrid,
    UInt8Array,
    check_rgb,
    min_segment_size,
)
from lidar_ssl_core.superpixels.connectivity import enforce_connectivity

F32 = npt.NDArray[np.float32]
_FAR = np.float32(1e12)  # distance of a dead centre or one outside the search window
_WINDOW_CELLS = 2  # candidate centres: seed cells within +-2 cells (scikit-image searches +-2 steps)


def slic_fast(
    rgb: UInt8Array,
    n_segments: int = 150,
    compactness: float = 6.0,
    sigma: float = 3.0,
    *,
    max_num_iter: int = 10,
    min_block: float = 10.0,
    refine_passes: int = 2,
) -> Int32Array:
    """SLIC superpixels of an RGB uint8 image, ~10-20x faster than scikit-image at 1600x900.

    Same parameters and meaning as :func:`slic_reference`; returns contiguous int32 labels 0..K-1
    with every segment 4-connected. Deterministic (no randomness, fixed tie-breaking).
    """
    image = check_rgb(rgb)
    if n_segments < 1 or compactness <= 0 or sigma < 0:
        raise SuperpixelError(
            f"bad SLIC settings n_segments={n_segments} compactness={compactness} sigma={sigma}"
        )
    height, width = image.shape[:2]
    grid = SeedGrid.for_image(height, width, n_segments)
    pyramid = _lab_pyramid(image, sigma, compactness, _n_levels(grid, height, width, min_block))
    levels = len(pyramid) - 1
    spatial_w = np.float32(1.0 / grid.step**2)

    coarse = pyramid[levels]
    labels = _kmeans(coarse, 2**levels, grid, spatial_w, max_num_iter)
    min_size = min_segment_size(height, width, grid.n_seeds)
    labels = enforce_connectivity(labels, max(1, min_size // 4**levels))
    if levels == 0:
        return labels
    centres = _Centres.of(labels, coarse, 2**levels)
    for level in range(levels - 1, -1, -1):
        lab = pyramid[level]
        labels = _upsample2(labels, lab.shape[0], lab.shape[1])
        for _ in range(refine_passes):
            labels = _refine_borders(labels, lab, 2**level, centres, spatial_w)
    return enforce_connectivity(labels, min_size)


def _n_levels(grid: SeedGrid, height: int, width: int, min_block: float) -> int:
    levels = 0
    while (
        min(grid.step_y, grid.step_x) / 2 ** (levels + 1) >= min_block
        and min(height, width) / 2 ** (levels + 1) >= 8
    ):
        levels += 1
    return levels


def _lab_pyramid(image: UInt8Array, sigma: float, compactness: float, levels: int) -> list[F32]:
    """Full-resolution smoothed CIELAB / compactness, then ``levels`` 2x area-averaged halvings.

    Like scikit-image, the image is first stretched to [0, 1] by its own min/max; unlike it, the blur
    is applied to the RGB bytes before the Lab conversion (4x cheaper; borders differ by < 1 Lab unit).
    """
    lo, hi = int(image.min()), int(image.max())
    values = np.arange(256, dtype=np.float32) - lo
    lut = values / np.float32(hi - lo) if hi > lo else np.zeros(256, dtype=np.float32)
    blurred = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) if sigma > 0 else image
    rgb01 = cv2.LUT(blurred, np.clip(lut, 0.0, 1.0))
    lab = cv2.cvtColor(rgb01, cv2.COLOR_RGB2Lab)
    lab *= np.float32(1.0 / compactness)
    pyramid: list[F32] = [lab]
    for _ in range(levels):
        prev = pyramid[-1]
        h, w = prev.shape[:2]
        if h % 2 or w % 2:
            prev = cv2.copyMakeBorder(prev, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        pyramid.append(
            cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA)
        )
    return pyramid


def _full_res_coord(n: int, scale: int) -> F32:
    """Full-resolution coordinate of the centres of ``n`` pixels at a level of the given scale."""
    return ((np.arange(n, dtype=np.float32) + 0.5) * scale - 0.5).astype(np.float32)


def _cells_1d(
    coords: F32, start: int, step: int, n_cells: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Pixel indices of each seed cell along one axis, padded to equal length (+ validity mask)."""
    cell = np.clip(np.rint((coords - start) / step), 0, n_cells - 1).astype(np.intp)
    counts = np.bincount(cell, minlength=n_cells)
    if (counts == 0).any():
        raise SuperpixelError("internal: a SLIC seed cell has no pixel at the working resolution")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    longest = int(counts.max())
    offset = np.arange(longest)
    idx = first[:, None] + np.minimum(offset[None, :], counts[:, None] - 1)
    return idx, offset[None, :] < counts[:, None]


def _kmeans(lab: F32, scale: int, grid: SeedGrid, spatial_w: np.float32, max_num_iter: int) -> Int32Array:
    """SLIC k-means on one pyramid level; returns the centre id of every pixel (not contiguous)."""
    h, w = lab.shape[:2]
    ys, xs = _full_res_coord(h, scale), _full_res_coord(w, scale)
    row_idx, row_ok = _cells_1d(ys, grid.start_y, grid.step_y, grid.n_y)
    col_idx, col_ok = _cells_1d(xs, grid.start_x, grid.step_x, grid.n_x)
    ny, nx, rmax, cmax = grid.n_y, grid.n_x, row_idx.shape[1], col_idx.shape[1]
    n_cells = ny * nx

    # pixels grouped by seed cell: (cell, pixel-in-cell, channel), padding repeats a real pixel
    feats = lab[row_idx[:, None, :, None], col_idx[None, :, None, :]].reshape(n_cells, rmax * cmax, 3)
    valid = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(n_cells, rmax * cmax)
    cell_y = np.broadcast_to(ys[row_idx][:, None, :], (ny, nx, rmax)).reshape(n_cells, rmax)
    cell_x = np.broadcast_to(xs[col_idx][None, :, :], (ny, nx, cmax)).reshape(n_cells, cmax)

    # candidate centres of each cell: the seed cells within +-_WINDOW_CELLS (id n_cells = none)
    offs = np.arange(-_WINDOW_CELLS, _WINDOW_CELLS + 1)
    cand_y = np.arange(ny)[:, None] + offs[None, :]
    cand_x = np.arange(nx)[:, None] + offs[None, :]
    ok = ((cand_y >= 0) & (cand_y < ny))[:, None, :, None] & ((cand_x >= 0) & (cand_x < nx))[None, :, None, :]
    cand = np.where(ok, cand_y[:, None, :, None] * nx + cand_x[None, :, None, :], n_cells)
    cand = cand.reshape(n_cells, -1)

    # pixel lists (valid only) for the centre update and the output
    flat_pix = (row_idx[:, None, :, None] * w + col_idx[None, :, None, :]).reshape(n_cells, -1)[valid]
    feats_v = feats[valid]
    y_v, x_v = (flat_pix // w).astype(np.float32), (flat_pix % w).astype(np.float32)
    y_v, x_v = (y_v + 0.5) * scale - 0.5, (x_v + 0.5) * scale - 0.5

    cy = np.zeros(n_cells + 1, dtype=np.float32)
    cx = np.zeros(n_cells + 1, dtype=np.float32)
    seed_y = grid.start_y + grid.step_y * np.arange(ny)
    seed_x = grid.start_x + grid.step_x * np.arange(nx)
    cy[:n_cells] = np.repeat(seed_y, nx)
    cx[:n_cells] = np.tile(seed_x, ny)
    # colours start at zero like scikit-image's, so the first assignment is by distance only
    colour = np.zeros((n_cells + 1, 3), dtype=np.float32)
    alive = np.ones(n_cells + 1, dtype=bool)
    alive[n_cells] = False

    win_y, win_x = np.float32(2 * grid.step_y), np.float32(2 * grid.step_x)
    assigned = np.full(flat_pix.size, -1, dtype=np.int64)
    for _ in range(max_num_iter):
        c_col = colour[cand]  # (cells, Q, 3)
        dist = np.matmul(feats, c_col.transpose(0, 2, 1))  # (cells, P, Q)
        dist *= np.float32(-2.0)
        norm = np.einsum("gqc,gqc->gq", c_col, c_col)
        norm[~alive[cand]] = _FAR
        dist += norm[:, None, :]
        dy = cell_y[:, :, None] - cy[cand][:, None, :]  # (cells, rmax, Q)
        dx = cell_x[:, :, None] - cx[cand][:, None, :]
        pen_y = np.where(np.abs(dy) <= win_y, dy * dy * spatial_w, _FAR)
        pen_x = np.where(np.abs(dx) <= win_x, dx * dx * spatial_w, _FAR)
        dist = dist.reshape(n_cells, rmax, cmax, -1)
        dist += pen_y[:, :, None, :]
        dist += pen_x[:, None, :, :]
        best = np.take_along_axis(cand, dist.reshape(n_cells, rmax * cmax, -1).argmin(-1), axis=1)
        new = best[valid]
        if np.array_equal(new, assigned):
            break
        assigned = new
        count = np.bincount(new, minlength=n_cells + 1).astype(np.float32)
        alive = count > 0
        safe = np.maximum(count, 1)
        cy = np.bincount(new, weights=y_v, minlength=n_cells + 1).astype(np.float32) / safe
        cx = np.bincount(new, weights=x_v, minlength=n_cells + 1).astype(np.float32) / safe
        for c in range(3):
            colour[:, c] = np.bincount(new, weights=feats_v[:, c], minlength=n_cells + 1) / safe
    out = np.empty(h * w, dtype=np.int32)
    out[flat_pix] = assigned
    return out.reshape(h, w)


@dataclass(frozen=True)
class _Centres:
    """Per-segment mean position (full-resolution px) and mean Lab / compactness."""

    y: F32
    x: F32
    colour: F32

    @classmethod
    def of(cls, labels: Int32Array, lab: F32, scale: int) -> _Centres:
        h, w = labels.shape
        flat = labels.ravel()
        k = int(flat.max()) + 1
        count = np.maximum(np.bincount(flat, minlength=k), 1).astype(np.float64)
        ys = np.repeat(_full_res_coord(h, scale), w)
        xs = np.tile(_full_res_coord(w, scale), h)
        colour = np.stack(
            [np.bincount(flat, weights=lab[..., c].ravel(), minlength=k) / count for c in range(3)], axis=1
        )
        return cls(
            y=(np.bincount(flat, weights=ys, minlength=k) / count).astype(np.float32),
            x=(np.bincount(flat, weights=xs, minlength=k) / count).astype(np.float32),
            colour=colour.astype(np.float32),
        )


def _upsample2(labels: Int32Array, h: int, w: int) -> Int32Array:
    return np.ascontiguousarray(np.repeat(np.repeat(labels, 2, axis=0), 2, axis=1)[:h, :w])


def _refine_borders(
    labels: Int32Array, lab: F32, scale: int, centres: _Centres, spatial_w: np.float32
) -> Int32Array:
    """Re-assign every pixel on a label border to the closest of its own and its 4-neighbours' segments."""
    h, w = labels.shape
    padded = np.pad(labels, 1, mode="edge")
    up, down = padded[:-2, 1:-1], padded[2:, 1:-1]
    left, right = padded[1:-1, :-2], padded[1:-1, 2:]
    border = (up != labels) | (down != labels) | (left != labels) | (right != labels)
    idx = np.flatnonzero(border)
    if idx.size == 0:
        return labels
    cand = np.stack(
        [labels.ravel()[idx], up.ravel()[idx], down.ravel()[idx], left.ravel()[idx], right.ravel()[idx]],
        axis=1,
    )
    feat = lab.reshape(-1, 3)[idx]
    py = (idx // w).astype(np.float32) * scale + np.float32(0.5 * scale - 0.5)
    px = (idx % w).astype(np.float32) * scale + np.float32(0.5 * scale - 0.5)
    dy = py[:, None] - centres.y[cand]
    dx = px[:, None] - centres.x[cand]
    dist = (dy * dy + dx * dx) * spatial_w
    c_col = centres.colour[cand]  # (N, 5, 3)
    for c in range(3):
        diff = feat[:, None, c] - c_col[:, :, c]
        dist += diff * diff
    out = labels.copy()
    out.ravel()[idx] = np.take_along_axis(cand, dist.argmin(axis=1)[:, None], axis=1)[:, 0]
    return out
