"""SLidR: superpixel-driven InfoNCE (Sautier et al. 2022, Eqs. 1-3).

For superpixel s with paired points G_s (over the pairs of s) and pixels S_s (all its pixels):

    q_s = (1/|G_s|) sum_{i in G_s} point_emb_i            (superpoint, anchor)
    k_s = (1/|S_s|) sum_{j in S_s} pixel_emb_j            (superpixel)
    L   = -(1/M) sum_s log( exp(<q_s,k_s>/tau) / sum_{s'} exp(<q_s,k_{s'}>/tau) )

over the M superpixels of the whole batch with |G_s| > 0 (others are dropped). Embeddings are l2-normalised
by the heads *before* pooling; the pooled features are not re-normalised (as the digest reads the paper and
code; ``renormalize=True`` is an option).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.loss_options import DEFAULT_TEMPERATURE
from lidar_ssl_core.losses.gather import Gather, identity
from lidar_ssl_core.losses.infonce import (
    LossDetails,
    check_features,
    check_index,
    infonce_details,
)
from lidar_ssl_core.losses.ppkt import check_pairing_images


@dataclass(frozen=True)
class PooledSuperpixels:
    """Pooled features of the kept superpixels (row i of every field is the same superpixel).

    points: (M, F) superpoint embeddings q; pixels: (M, F) superpixel embeddings k; ids: (M,) batch superpixel
    ids, ascending; num_points: (M,) pairs per kept superpixel.
    """

    points: torch.Tensor
    pixels: torch.Tensor
    ids: torch.Tensor
    num_points: torch.Tensor


def _mean_by_id(values: torch.Tensor, ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-id mean (n, F) and count (n,) of ``values`` (P, F); ids < 0 are ignored."""
    valid = ids >= 0
    ids, values = ids[valid], values[valid]
    sums = values.new_zeros((n, values.shape[1])).index_add(0, ids, values)
    counts = torch.bincount(ids, minlength=n)
    return sums / counts.clamp_min(1).unsqueeze(1).to(values.dtype), counts


def nearest_resize_superpixels(superpixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of an (I, H, W) id map to ``size`` (h, w), indexing like torch's 'nearest' mode."""
    _, h_in, w_in = superpixels.shape
    h, w = size
    if (h, w) == (h_in, w_in):
        return superpixels
    rows = torch.div(torch.arange(h, device=superpixels.device) * h_in, h, rounding_mode="floor")
    cols = torch.div(torch.arange(w, device=superpixels.device) * w_in, w, rounding_mode="floor")
    return superpixels[:, rows][:, :, cols]


def _area_pool(image_feats: torch.Tensor, superpixels: torch.Tensor, n: int) -> torch.Tensor:
    """(n, C) mean over each superpixel's pixels of the map, each pixel taking the cell that holds its centre.

    Equal to nearest-upsampling the (I, C, h, w) map to the (I, H, W) superpixels and averaging, without
    building the upsampled map: one (superpixel, cell) pair count per distinct pair.
    """
    i_n, c, h, w = image_feats.shape
    _, hh, ww = superpixels.shape
    dev = superpixels.device
    rows = torch.div((2 * torch.arange(hh, device=dev) + 1) * h, 2 * hh, rounding_mode="floor")
    cols = torch.div((2 * torch.arange(ww, device=dev) + 1) * w, 2 * ww, rounding_mode="floor")
    cell = (rows[:, None] * w + cols[None, :]).unsqueeze(0) + (torch.arange(i_n, device=dev) * h * w)[
        :, None, None
    ]
    sp, cell = superpixels.reshape(-1), cell.reshape(-1)
    valid = sp >= 0
    pairs, counts = torch.unique(sp[valid] * (i_n * h * w) + cell[valid], return_counts=True)
    ids, cells = torch.div(pairs, i_n * h * w, rounding_mode="floor"), pairs % (i_n * h * w)
    flat = image_feats.permute(0, 2, 3, 1).reshape(-1, c)
    weight = counts.to(flat.dtype)
    sums = flat.new_zeros((n, c)).index_add(0, ids, flat[cells] * weight[:, None])
    totals = flat.new_zeros(n).index_add(0, ids, weight)
    return sums / totals.clamp_min(1).unsqueeze(1)


def pool_image_features(
    image_feats: torch.Tensor, superpixels: torch.Tensor, ids: torch.Tensor, *, area: bool = False
) -> torch.Tensor:
    """Mean of ``image_feats`` (I, C, h, w) over each superpixel in ``ids`` (M,) -> (M, C).

    When (h, w) differs from the superpixels' (I, H, W): ``area=False`` nearest-resizes the superpixels to
    (h, w) (the ST-SLidR code's pooling of its stride-4 teacher features; a superpixel that vanishes at that
    resolution gets a zero row, and each cell takes the superpixel of its top-left pixel, half a cell off:
    7 px for a ViT/14); ``area=True`` averages over every pixel of the superpixel the cell holding that
    pixel's centre (no superpixel vanishes, nothing is shifted).
    """
    if image_feats.ndim != 4 or superpixels.ndim != 3 or image_feats.shape[0] != superpixels.shape[0]:
        raise LossInputError(
            f"image_feats (I, C, h, w) {tuple(image_feats.shape)} and superpixels (I, H, W) "
            f"{tuple(superpixels.shape)} must have the same number of images I"
        )
    if area and tuple(image_feats.shape[2:]) != tuple(superpixels.shape[1:]):
        sp_all = superpixels.long()
        n = int(max(int(sp_all.max()), int(ids.max()) if ids.numel() else -1)) + 1
        return _area_pool(image_feats, sp_all, n)[ids]
    sp = nearest_resize_superpixels(superpixels.long(), (image_feats.shape[2], image_feats.shape[3]))
    n = int(max(int(sp.max()), int(ids.max()) if ids.numel() else -1)) + 1
    flat = image_feats.permute(0, 2, 3, 1).reshape(-1, image_feats.shape[1])
    mean, _ = _mean_by_id(flat, sp.reshape(-1), n)
    return mean[ids]


def pool_superpixels(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    superpixels: torch.Tensor,
    pairing_superpixels: torch.Tensor | None = None,
    *,
    renormalize: bool = False,
) -> PooledSuperpixels:
    """SLidR pooling (Eqs. 1-2) of a collated batch; superpixels with no paired point are dropped.

    Args:
        point_feats: (V, F) point/voxel embeddings (l2-normalised by the head).
        image_feats: (I, F, H, W) pixel embeddings at the superpixel resolution.
        pairing_points: (P,) row of ``point_feats`` per pair (``pairing_voxels`` for voxel features).
        pairing_images: (P, 3) [image, row, col] per pair.
        superpixels: (I, H, W) batch-unique superpixel ids (negative = no superpixel, ignored).
        pairing_superpixels: (P,) superpixel id of each pair; looked up in ``superpixels`` when None.
        renormalize: l2-normalise the pooled features (not done by SLidR).
    """
    check_features("point_feats", point_feats)
    if image_feats.ndim != 4 or image_feats.shape[1] != point_feats.shape[1]:
        raise LossInputError(
            f"image_feats must be (I, F={point_feats.shape[1]}, H, W) like point_feats"
            f" {tuple(point_feats.shape)},"
            f" got {tuple(image_feats.shape)}"
        )
    if superpixels.shape != (image_feats.shape[0], *image_feats.shape[2:]):
        raise LossInputError(
            f"superpixels {tuple(superpixels.shape)} must be (I, H, W) of image_feats"
            f" {tuple(image_feats.shape)}"
        )
    check_index("pairing_points", pairing_points, point_feats.shape[0], "rows of point_feats")
    check_pairing_images(image_feats, pairing_images)
    if pairing_superpixels is None:
        img, row, col = pairing_images.long().unbind(1)
        pairing_superpixels = superpixels[img, row, col]
    if (
        pairing_superpixels.shape != pairing_points.shape
        or pairing_images.shape[0] != pairing_points.shape[0]
    ):
        raise LossInputError(
            f"pairing_points {tuple(pairing_points.shape)}, pairing_images {tuple(pairing_images.shape)} and "
            f"pairing_superpixels {tuple(pairing_superpixels.shape)} must describe the same P pairs"
        )
    sp = superpixels.long()
    pair_sp = pairing_superpixels.long()
    n = max(int(sp.max()) if sp.numel() else -1, int(pair_sp.max()) if pair_sp.numel() else -1) + 1
    q, n_pts = _mean_by_id(point_feats[pairing_points], pair_sp, n)
    flat = image_feats.permute(0, 2, 3, 1).reshape(-1, image_feats.shape[1])
    k, _ = _mean_by_id(flat, sp.reshape(-1), n)
    ids = torch.nonzero(n_pts > 0).squeeze(1)
    q, k = q[ids], k[ids]
    if renormalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    return PooledSuperpixels(points=q, pixels=k, ids=ids, num_points=n_pts[ids])


def slidr_details(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    superpixels: torch.Tensor,
    pairing_superpixels: torch.Tensor | None = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    renormalize: bool = False,
    gather: Gather | None = None,
) -> LossDetails:
    """:func:`slidr_loss` with per-anchor terms; ``anchors`` are batch superpixel ids (without ``gather``)."""
    pooled = pool_superpixels(
        point_feats,
        image_feats,
        pairing_points,
        pairing_images,
        superpixels,
        pairing_superpixels,
        renormalize=renormalize,
    )
    gather = gather or identity
    q, k = gather(pooled.points), gather(pooled.pixels)
    if q.shape[0] == 0:
        raise LossInputError("no superpixel has a paired point: the SLidR loss is undefined for this batch")
    details = infonce_details(q, k, temperature)
    return details if gather is not identity else details.reindexed(pooled.ids)


def slidr_loss(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    superpixels: torch.Tensor,
    pairing_superpixels: torch.Tensor | None = None,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    renormalize: bool = False,
    gather: Gather | None = None,
) -> torch.Tensor:
    """SLidR superpixel InfoNCE (module docstring) of a batch; arguments as :func:`pool_superpixels`.

    ``gather`` (under DDP: :func:`~lidar_ssl_core.losses.gather.all_gather_rows`) contrasts the pooled
    superpixels against those of every process.
    """
    return slidr_details(
        point_feats,
        image_feats,
        pairing_points,
        pairing_images,
        superpixels,
        pairing_superpixels,
        temperature=temperature,
        renormalize=renormalize,
        gather=gather,
    ).loss
