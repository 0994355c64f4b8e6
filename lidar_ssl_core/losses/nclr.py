"""NCLR losses (Zhang et al., 2D-3D neural calibration; methods.md section 3): LTA InfoNCE, overlap BCE,
soft matching and the Huber pose loss. The total is ``1.0 L_f + 0.5 L_o + 0.2 L_p`` (Eq. in Step 6).

LTA InfoNCE (Eqs. 1-2) over S sampled point-pixel pairs with normalised features q (points) and k
(pixels) and a learnable symmetric C x C matrix ``W_f``:

    s_ij  = q_i W_f k_j^T / tau
    L_f^P = -(1/S) sum_i log( sum_{j in pos(i)} exp(s_ij) / sum_{j in pos(i) or neg(i)} exp(s_ij) )

pos(i): pixels of the same image within ``r_p`` pixels of pixel i (i itself included); neg(i): pixels of
other images, or of the same image farther than ``r_n``; pixels in between are ignored. ``L_f^I`` is the
same with the roles swapped (columns); ``L_f = L_f^P + L_f^I`` (the paper says "symmetric", the sum is the
digest's reading).

Overlap (Eq. 3): ``L_o = BCE(S^P, 1_o^P) + BCE(S^I, 1_o^I)``, each the mean over its points / pixels.

Soft matching (Eqs. 4-5): ``C^_i = sum_j w_ij C_j``, ``w_ij = softmax_j(q_i W_f k_j^T / t_m)`` over the
pixels in the predicted overlap, ``t_m`` = 1 as printed (no temperature).

Pose (Eq. 7): ``L_p = H(R_gt^T R^ - E) + H(t_gt - t^)``, H the Huber loss (mean over the entries, delta
not stated: 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.losses.infonce import check_features

NCLR_TEMPERATURE = 0.07
NCLR_WEIGHTS = (1.0, 0.5, 0.2)  # lambda_f, lambda_o, lambda_p


def symmetric(a: torch.Tensor) -> torch.Tensor:
    """``W_f = (A + A^T) / 2``: a symmetric matrix (hence ``Q D Q^T``) from an unconstrained parameter."""
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise LossInputError(f"W_f must be a square matrix, got {tuple(a.shape)}")
    return 0.5 * (a + a.T)


def pair_masks(
    pixels: torch.Tensor, images: torch.Tensor, r_p: float, r_n: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S) positive and negative masks from the sampled pairs' pixels (S, 2) and images (S,)."""
    if r_n < r_p:
        raise LossInputError(f"the negative margin r_n ({r_n}) must be >= the positive margin r_p ({r_p})")
    same = images[:, None] == images[None, :]
    p = pixels.float()
    dist2 = (p[:, None, 0] - p[None, :, 0]) ** 2 + (p[:, None, 1] - p[None, :, 1]) ** 2  # exact: integers
    pos = same & (dist2 <= r_p * r_p)
    neg = ~same | (dist2 > r_n * r_n)
    return pos, neg


def _masked_nce(logits: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-log(sum_pos exp / sum_(pos or neg) exp)``."""
    ninf = torch.finfo(logits.dtype).min
    num = torch.logsumexp(logits.masked_fill(~pos, ninf), dim=1)
    den = torch.logsumexp(logits.masked_fill(~(pos | neg), ninf), dim=1)
    return (den - num).mean()


def lta_infonce(
    point_feats: torch.Tensor,
    pixel_feats: torch.Tensor,
    pixels: torch.Tensor,
    images: torch.Tensor,
    w_f: torch.Tensor,
    *,
    temperature: float = NCLR_TEMPERATURE,
    r_p: float = 1.0,
    r_n: float = 8.0,
) -> torch.Tensor:
    """``L_f = L_f^P + L_f^I`` (module docstring) of S pairs: row i of ``point_feats`` (S, C) and
    ``pixel_feats`` (S, C) is a pair at ``pixels[i]`` (row, col) of image ``images[i]``; ``w_f`` symmetric."""
    check_features("point_feats", point_feats)
    check_features("pixel_feats", pixel_feats, point_feats.shape[1])
    if point_feats.shape[0] != pixel_feats.shape[0] or pixels.shape != (point_feats.shape[0], 2):
        raise LossInputError(
            f"point_feats {tuple(point_feats.shape)}, pixel_feats {tuple(pixel_feats.shape)} and pixels "
            f"{tuple(pixels.shape)} must describe the same S pairs"
        )
    if temperature <= 0:
        raise LossInputError(f"temperature must be > 0, got {temperature}")
    pos, neg = pair_masks(pixels, images, r_p, r_n)
    logits = point_feats @ w_f @ pixel_feats.T / temperature
    return _masked_nce(logits, pos, neg) + _masked_nce(logits.T, pos.T, neg.T)


def overlap_loss(
    point_logits: torch.Tensor,
    point_targets: torch.Tensor,
    pixel_logits: torch.Tensor,
    pixel_targets: torch.Tensor,
) -> torch.Tensor:
    """``L_o`` (Eq. 3) from logits (the sigmoid is applied inside, stably) and 0/1 targets."""
    if point_logits.shape != point_targets.shape or pixel_logits.shape != pixel_targets.shape:
        raise LossInputError("overlap logits and targets must have the same shapes")
    return F.binary_cross_entropy_with_logits(
        point_logits, point_targets.to(point_logits.dtype)
    ) + F.binary_cross_entropy_with_logits(pixel_logits, pixel_targets.to(pixel_logits.dtype))


def soft_match(
    point_feats: torch.Tensor,
    pixel_feats: torch.Tensor,
    pixel_coords: torch.Tensor,
    w_f: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Predicted 2D location (n, 2) of each point: the ``w_ij``-weighted mean of the m pixel coordinates
    (m, 2) (Eqs. 4-5); ``point_feats`` (n, C), ``pixel_feats`` (m, C)."""
    check_features("point_feats", point_feats)
    check_features("pixel_feats", pixel_feats, point_feats.shape[1])
    if pixel_coords.shape != (pixel_feats.shape[0], 2):
        raise LossInputError(f"pixel_coords must be (m, 2), got {tuple(pixel_coords.shape)}")
    weights = torch.softmax(point_feats @ w_f @ pixel_feats.T / temperature, dim=1)
    return weights @ pixel_coords.to(weights.dtype)


def pose_loss(
    rotation: torch.Tensor,
    translation: torch.Tensor,
    rotation_gt: torch.Tensor,
    translation_gt: torch.Tensor,
    *,
    delta: float = 1.0,
) -> torch.Tensor:
    """``L_p = H(R_gt^T R^ - E) + H(t_gt - t^)`` (Eq. 7), Huber means over the 9 and 3 entries."""
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    rot_err = rotation_gt.to(rotation.dtype).T @ rotation - eye
    t_err = translation_gt.to(translation.dtype) - translation
    zero_r, zero_t = torch.zeros_like(rot_err), torch.zeros_like(t_err)
    return F.huber_loss(rot_err, zero_r, delta=delta) + F.huber_loss(t_err, zero_t, delta=delta)
