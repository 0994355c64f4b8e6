"""PPKT: point-to-pixel InfoNCE on a random subset of the point-pixel pairs (SLidR's PPKT baseline).

For S sampled pairs (i_s, j_s) (point / voxel index, pixel [image, row, col]) with l2-normalised point
embeddings q and pixel embeddings k:

    L_PPKT = -(1/S) sum_s log( exp(<q_{i_s}, k_{j_s}>/tau) / sum_{t=1..S} exp(<q_{i_s}, k_{j_t}>/tau) )

i.e. ``CrossEntropy((q_S k_S^T)/tau, arange(S))`` with points as anchors (rows), as the reference code.
S = 4096 pairs are drawn uniformly without replacement from all pairs of the batch; tau = 0.07.
"""

from __future__ import annotations

import torch

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.loss_options import DEFAULT_NUM_MATCHES, DEFAULT_TEMPERATURE
from lidar_ssl_core.losses.gather import Gather, identity
from lidar_ssl_core.losses.infonce import (
    LossDetails,
    check_features,
    check_index,
    infonce_details,
    sample_pairs,
)


def check_pairing_images(image_feats: torch.Tensor, pairing_images: torch.Tensor) -> None:
    """Raise LossInputError unless ``pairing_images`` (P, 3) indexes pixels of ``image_feats``"
    " (I, F, H, W)."""
    if image_feats.ndim != 4 or not image_feats.is_floating_point():
        raise LossInputError(
            f"image_feats must be a floating (I, F, H, W) tensor, got {tuple(image_feats.shape)}"
            f" {image_feats.dtype}"
        )
    if pairing_images.ndim != 2 or pairing_images.shape[1] != 3:
        raise LossInputError(
            f"pairing_images must be (P, 3) [image, row, col], got {tuple(pairing_images.shape)}"
        )
    n_img, _, h, w = image_feats.shape
    img, row, col = pairing_images.long().unbind(1)
    check_index("pairing_images[:, 0] (image)", img, n_img, "images")
    check_index("pairing_images[:, 1] (row)", row, h, f"rows of the (H={h}, W={w}) feature maps")
    check_index("pairing_images[:, 2] (col)", col, w, f"columns of the (H={h}, W={w}) feature maps")


def gather_pixel_features(image_feats: torch.Tensor, pairing_images: torch.Tensor) -> torch.Tensor:
    """Pixel embeddings (P, F) at ``pairing_images`` (P, 3) [image, row, col] of ``image_feats`` (I, F, H, W).

    The maps must be at the resolution of the pixel coordinates (SLidR's head upsamples to the crop size).
    """
    check_pairing_images(image_feats, pairing_images)
    img, row, col = pairing_images.long().unbind(1)
    return image_feats[img, :, row, col]


def ppkt_details(
    point_feats: torch.Tensor,
    pixel_feats: torch.Tensor,
    pairing_points: torch.Tensor | None = None,
    *,
    num_matches: int = DEFAULT_NUM_MATCHES,
    temperature: float = DEFAULT_TEMPERATURE,
    generator: torch.Generator | None = None,
    gather: Gather | None = None,
) -> LossDetails:
    """PPKT loss (module docstring) on ``num_matches`` pairs sampled with ``generator``, per anchor.

    ``anchors`` are the sampled pair indices (without ``gather``; with it, rows of the gathered pairs).

    Args:
        point_feats: (V, F) l2-normalised point (or voxel) embeddings.
        pixel_feats: (P, F) pixel embedding of each pair (see :func:`gather_pixel_features`).
        pairing_points: (P,) row of ``point_feats`` of each pair (``pairing_voxels`` for voxel features);
            None when ``point_feats`` is already per pair (V == P).
        num_matches: pairs per batch S (all pairs when there are fewer).
        generator: torch.Generator for reproducible sampling.
        gather: under DDP, :func:`~lidar_ssl_core.losses.gather.all_gather_rows` contrasts the sampled pairs
            against those of every process.
    """
    check_features("point_feats", point_feats)
    check_features("pixel_feats", pixel_feats, point_feats.shape[1])
    n_pairs = pixel_feats.shape[0]
    if pairing_points is None:
        if point_feats.shape[0] != n_pairs:
            raise LossInputError(
                f"point_feats {tuple(point_feats.shape)} is not per pair (pixel_feats"
                f" {tuple(pixel_feats.shape)});"
                " pass pairing_points"
            )
        pairing_points = torch.arange(n_pairs, device=point_feats.device)
    check_index("pairing_points", pairing_points, point_feats.shape[0], "rows of point_feats")
    if pairing_points.shape[0] != n_pairs:
        raise LossInputError(
            f"pairing_points {tuple(pairing_points.shape)} and pixel_feats"
            f" {tuple(pixel_feats.shape)} disagree on P"
        )
    idx = sample_pairs(n_pairs, num_matches, generator, device=point_feats.device)
    gather = gather or identity
    details = infonce_details(gather(point_feats[pairing_points[idx]]), gather(pixel_feats[idx]), temperature)
    return details if gather is not identity else details.reindexed(idx)


def ppkt_loss(
    point_feats: torch.Tensor,
    pixel_feats: torch.Tensor,
    pairing_points: torch.Tensor | None = None,
    *,
    num_matches: int = DEFAULT_NUM_MATCHES,
    temperature: float = DEFAULT_TEMPERATURE,
    generator: torch.Generator | None = None,
    gather: Gather | None = None,
) -> torch.Tensor:
    """PPKT loss (module docstring); arguments as :func:`ppkt_details`."""
    return ppkt_details(
        point_feats,
        pixel_feats,
        pairing_points,
        num_matches=num_matches,
        temperature=temperature,
        generator=generator,
        gather=gather,
    ).loss
