"""ScaLR-style feature distillation (Puy et al., CVPR 2024, "Three Pillars"): regress the teacher's features.

Each paired point (``level="pair"``) or each voxel with pairs (``level="voxel"``, the mean of its points'
targets) has a student feature s (P, C) and a target t (P, C), the frozen teacher feature of its pixel,
bilinearly sampled from the teacher's map. With unit vectors s^ = s / ||s||, t^ = t / ||t||:

    L = (1/P) sum_p [ w_cos (1 - <s^_p, t^_p>) + w_l2 ||s^_p - t^_p||_2 ]

No negatives, no superpixels, no temperature. ScaLR's released code uses the L2 term alone (w_cos = 0,
w_l2 = 1; ||s^ - t^|| = sqrt(2 - 2 cos)); the cosine term (the default here) has the same minimiser and a
gradient that shrinks smoothly to 0 at it, where the norm's keeps unit length. Pairs whose teacher feature is
zero (sampled outside the map) are dropped. The student features are the backbone's output mapped to the
teacher's width (method side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.losses.infonce import LossDetails, check_features, check_index
from lidar_ssl_core.losses.st_slidr import sample_teacher_at_pixels


@dataclass(frozen=True)
class ScalrLossOptions:
    """cosine_weight / l2_weight: w_cos and w_l2 (module docstring); level: ``pair`` or ``voxel``;
    align_corners: how pixels map onto the teacher map (False: patch centres, ViTs; True: ResNet maps)."""

    cosine_weight: float = 1.0
    l2_weight: float = 0.0
    level: Literal["pair", "voxel"] = "pair"
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.cosine_weight < 0 or self.l2_weight < 0 or self.cosine_weight + self.l2_weight == 0:
            raise LossInputError(
                f"cosine_weight {self.cosine_weight} and l2_weight {self.l2_weight} must be >= 0, not both 0"
            )


def distillation_terms(
    student: torch.Tensor, target: torch.Tensor, options: ScalrLossOptions
) -> torch.Tensor:
    """Per-row w_cos (1 - cos) + w_l2 ||s^ - t^|| of paired rows (P, C) -> (P,); the target is detached."""
    s = F.normalize(student, dim=1)
    t = F.normalize(target.detach(), dim=1)
    terms = student.new_zeros(student.shape[0])
    if options.cosine_weight:
        terms = terms + options.cosine_weight * (1.0 - (s * t).sum(1))
    if options.l2_weight:
        terms = terms + options.l2_weight * (s - t).norm(dim=1)
    return terms


def scalr_details(
    point_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    *,
    image_size: tuple[int, int],
    options: ScalrLossOptions = ScalrLossOptions(),
) -> LossDetails:
    """:func:`scalr_loss` with per-anchor terms; ``anchors`` are pair indices (``pair``) or rows of
    ``point_feats`` (``voxel``); ``dropped`` the pairs without a teacher feature."""
    check_features("point_feats", point_feats)
    if teacher_feats.ndim != 4 or teacher_feats.shape[1] != point_feats.shape[1]:
        raise LossInputError(
            f"teacher_feats must be (I, C={point_feats.shape[1]}, h, w) like point_feats "
            f"{tuple(point_feats.shape)}, got {tuple(teacher_feats.shape)}"
        )
    if pairing_images.ndim != 2 or pairing_images.shape[1] != 3:
        raise LossInputError(
            f"pairing_images must be (P, 3) [image, row, col], got {tuple(pairing_images.shape)}"
        )
    if pairing_points.shape[0] != pairing_images.shape[0]:
        raise LossInputError(
            f"pairing_points {tuple(pairing_points.shape)} and pairing_images"
            f" {tuple(pairing_images.shape)} differ"
        )
    check_index("pairing_points", pairing_points, point_feats.shape[0], "rows of point_feats")
    h, w = image_size
    img, row, col = pairing_images.long().unbind(1)
    check_index("pairing_images[:, 0] (image)", img, teacher_feats.shape[0], "images")
    check_index("pairing_images[:, 1] (row)", row, h, f"rows of the (H={h}, W={w}) images")
    check_index("pairing_images[:, 2] (col)", col, w, f"columns of the (H={h}, W={w}) images")
    target = sample_teacher_at_pixels(
        teacher_feats.detach(), pairing_images, image_size, align_corners=options.align_corners
    )
    has = target.abs().sum(1) != 0
    pairs = torch.nonzero(has).squeeze(1)
    dropped = torch.nonzero(~has).squeeze(1)
    if pairs.numel() == 0:
        raise LossInputError("no pair has a teacher feature: the ScaLR loss is undefined for this batch")
    rows = pairing_points[pairs].long()
    target = F.normalize(target[pairs], dim=1)
    if options.level == "voxel":
        anchors, inverse = torch.unique(rows, return_inverse=True)
        summed = target.new_zeros((anchors.numel(), target.shape[1])).index_add(0, inverse, target)
        per_anchor = distillation_terms(point_feats[anchors], summed, options)
    else:
        anchors = pairs
        per_anchor = distillation_terms(point_feats[rows], target, options)
    return LossDetails(per_anchor.mean(), per_anchor, None, anchors, dropped)


def scalr_loss(
    point_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    *,
    image_size: tuple[int, int],
    options: ScalrLossOptions = ScalrLossOptions(),
) -> torch.Tensor:
    """Feature distillation loss (module docstring) of student features (V, C) and the frozen teacher map.

    Args:
        point_feats: (V, C) student features at the teacher's width (any norm; normalised here).
        teacher_feats: (I, C, h, w) frozen teacher map (pre-head) of the I images.
        pairing_points: (P,) row of ``point_feats`` per pair (``pairing_voxels`` for voxel features).
        pairing_images: (P, 3) [image, row, col] in images of ``image_size`` (H, W).
    """
    return scalr_details(
        point_feats, teacher_feats, pairing_points, pairing_images, image_size=image_size, options=options
    ).loss
