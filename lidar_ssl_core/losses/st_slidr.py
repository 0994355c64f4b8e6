"""ST-SLidR: semantically tolerant InfoNCE with class-agnostic balancing (Mahmoud et al., CVPR 2023).

Anchors q_i (pooled points), targets k_j (pooled pixels), logits s_ij = <q_i, k_j>/tau, and the semantic
similarity alpha_ij = <f_i, f_j> of the l2-normalised pooled features f of the *frozen* 2D backbone (pre-head,
2048-d for ResNet-50), computed over all M superpixels of the batch (no gradient flows through alpha).

* L_alpha (Eq. 2): negatives' logits scaled by (1 - alpha_ij), with alpha_ij < alpha_min set to 0:
      L_i = -log( e^{s_ii} / ( e^{s_ii} + sum_{j!=i} e^{(1-alpha_ij) s_ij} ) )
* L_knn (Eqs. 5-6): alpha_iK = K-th largest alpha_ij over j != i, C_ij = [alpha_ij < alpha_iK]:
      L_i = -log( e^{s_ii} / ( e^{s_ii} + sum_{j!=i} C_ij e^{s_ij} ) ),   K = floor(k_fraction * M)
* Balancing (Eq. 7): v_i = sum_j alpha_ij, v_i <- (v_i - v_min) / v_max, w_i = 1 - v_i,
      L_ST = sum_i w_i L_i / sum_i w_i          (without balancing: mean_i L_i)

:class:`STForm` picks between the paper and the authors' code (TRAILab/ST-SLidR ``NCELoss`` +
``loss_superpixel_stslidr_classbalance``), which differ:

=====================  =========================================  ============================================
                       ``STForm.PAPER`` (default)                 ``STForm.AUTHORS_CODE``
=====================  =========================================  ============================================
alpha                  as computed                                clipped to [0, 1]; anchors whose clipped row
                                                                  sums to 0 (no teacher feature) are dropped
excluded negatives     removed from the denominator (logit -inf)  logit multiplied by 0 (still adds e^0)
kNN                    K = floor(k_fraction*M) largest alpha_ij,  per-row linear ``k_fraction``-quantile of
                       j != i (ties with the K-th also removed)   1-alpha over all j (diagonal included),
                                                                  entries strictly below it masked; entries
                                                                  with alpha == 1 also masked
L_alpha                (1 - alpha') s_ij                           (1 - clip(alpha')) s_ij
votes                  sum_j alpha_ij (diagonal included)         same after zeroing alpha < 0.5 (noise)
vote normalisation     (v - v_min) / v_max  (as printed)          (v - v_min) / max(v - v_min)
=====================  =========================================  ============================================

The paper form is the default because it is what the paper specifies and analyses (Eq. 4 gradients); the code
form reproduces the released numbers. ST-PPKT (supplement §A) is L_knn on sampled point-pixel pairs.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
import torch.nn.functional as F

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.losses.gather import Gather, identity
from lidar_ssl_core.losses.infonce import (
    DEFAULT_NUM_MATCHES,
    DEFAULT_TEMPERATURE,
    check_features,
    check_index,
    check_same_shape,
    infonce_per_anchor,
    reduce_weighted,
    sample_pairs,
)
from lidar_ssl_core.losses.ppkt import check_pairing_images, gather_pixel_features
from lidar_ssl_core.losses.slidr import pool_image_features, pool_superpixels

CODE_VOTE_THRESHOLD = 0.5  # loss_balance_noise_threshold of the authors' config


class STForm(str, Enum):
    """Which reading of ST-SLidR to compute (see the module table)."""

    PAPER = "paper"
    AUTHORS_CODE = "authors_code"


class Tolerance(str, Enum):
    """How semantically similar negatives are tolerated."""

    KNN = "knn"  # Eqs. 5-6, used by ST-SLidR
    ALPHA = "alpha"  # Eq. 2 (with alpha_min)
    NONE = "none"  # plain InfoNCE (SLidR), e.g. balancing alone


def teacher_similarity(teacher_feats: torch.Tensor) -> torch.Tensor:
    """alpha = F F^T of the l2-normalised teacher features (M, C) -> (M, M), detached (teacher is frozen)."""
    check_features("teacher_feats", teacher_feats)
    f = F.normalize(teacher_feats.detach(), dim=1)
    return f @ f.T


def num_excluded(m: int, k_fraction: float) -> int:
    """K = floor(k_fraction * M), clamped to [0, M - 1] (the paper gives K as a fraction of the batch)."""
    if not 0.0 <= k_fraction < 1.0:
        raise LossInputError(f"k_fraction must be in [0, 1), got {k_fraction}")
    return min(max(m - 1, 0), math.floor(k_fraction * m))


def row_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``torch.quantile(x, q, dim=1)`` (linear interpolation) via one partial topk, not"
    " a full sort."""
    n = x.shape[1]
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    vals = x.topk(hi + 1, dim=1, largest=False, sorted=True).values
    return torch.lerp(vals[:, lo], vals[:, hi], pos - lo)


def _adaptive_k(alpha: torch.Tensor, k: int) -> torch.Tensor:
    """Per-anchor K_i = round(K * v_i / mean(v)), v_i = sum_{j!=i} clip(alpha_ij, 0), clamped to [0, M-1]."""
    a = alpha.clamp_min(0)
    v = a.sum(1) - a.diagonal()
    mean = v.mean()
    scale = torch.where(mean > 0, v / torch.where(mean > 0, mean, torch.ones_like(mean)), torch.ones_like(v))
    return torch.round(k * scale).long().clamp(0, alpha.shape[0] - 1)


def knn_keep_mask(alpha: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Eq. 5 as a bool (M, M) mask, True = kept: C_ij = [alpha_ij < alpha_iK] for j != i, and the diagonal.

    ``k`` is K, or a (M,) tensor of per-anchor K_i (adaptive K).
    """
    m = alpha.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=alpha.device)
    a = alpha.masked_fill(eye, -math.inf)
    k_max = int(k.max()) if isinstance(k, torch.Tensor) else k
    if k_max <= 0:
        return torch.ones_like(eye)
    top = a.topk(k_max, dim=1, sorted=True).values
    if isinstance(k, torch.Tensor):
        kth = top.gather(1, (k - 1).clamp_min(0).unsqueeze(1))
        kth = torch.where(k.unsqueeze(1) > 0, kth, torch.full_like(kth, math.inf))
    else:
        kth = top[:, k - 1 : k]
    return (a < kth) | eye


def tolerant_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    alpha: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    tolerance: Tolerance = Tolerance.KNN,
    k_fraction: float = 0.01,
    alpha_min: float = 0.0,
    form: STForm = STForm.PAPER,
    adaptive_k: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (M', M') of the tolerant loss, the kept anchor indices (M',) and the alpha used (M', M').

    M' = M except in the code form, which drops anchors without teacher feature (clipped alpha row sums to 0).
    """
    check_features("q", q)
    check_features("k", k)
    check_same_shape("q", q, "k", k)
    m = q.shape[0]
    if alpha.shape != (m, m):
        raise LossInputError(
            f"alpha must be (M, M) = ({m}, {m}) for q {tuple(q.shape)}, got {tuple(alpha.shape)}"
        )
    if temperature <= 0:
        raise LossInputError(f"temperature must be > 0, got {temperature}")
    alpha = alpha.detach().to(q.dtype)
    rows = torch.arange(m, device=q.device)
    logits = q @ k.T / temperature
    if form is STForm.PAPER:
        if tolerance is Tolerance.KNN:
            kk = num_excluded(m, k_fraction)
            keep = knn_keep_mask(alpha, _adaptive_k(alpha, kk) if adaptive_k else kk)
            logits = logits.masked_fill(~keep, -math.inf)
        elif tolerance is Tolerance.ALPHA:
            a = torch.where(alpha >= alpha_min, alpha, torch.zeros_like(alpha))
            factor = (1.0 - a).fill_diagonal_(1.0)
            logits = logits * factor
        return logits, rows, alpha
    if adaptive_k:
        raise LossInputError("adaptive_k is only defined for STForm.PAPER with Tolerance.KNN")
    sim = alpha.clamp(0.0, 1.0)
    rows = torch.nonzero(sim.sum(1) != 0).squeeze(1)
    if rows.numel() < m:
        sim = sim[rows][:, rows]
        logits = logits[rows][:, rows]
    if tolerance is Tolerance.NONE:
        return logits, rows, sim
    if tolerance is Tolerance.ALPHA:
        weight = 1.0 - torch.where(sim >= alpha_min, sim, torch.zeros_like(sim))
    else:
        if not 0.0 <= k_fraction < 1.0:
            raise LossInputError(f"k_fraction must be in [0, 1), got {k_fraction}")
        weight = 1.0 - sim
        if k_fraction > 0.0:
            thr = row_quantile(weight, k_fraction).unsqueeze(1)
            weight = torch.where((weight < thr) | (weight == 0), 0.0, 1.0).to(weight.dtype)
    weight = weight.fill_diagonal_(1.0)
    return logits * weight, rows, sim


def class_agnostic_weights(
    alpha: torch.Tensor, form: STForm = STForm.PAPER, vote_threshold: float | None = None
) -> torch.Tensor:
    """Eq. 7 anchor weights w_i = 1 - v_i (M,) from the similarity (M, M) (see the module table).

    ``vote_threshold``: similarities below it do not vote (default: none for the paper, 0.5 for the code).
    A zero denominator gives v = 0, i.e. w = 1 (unweighted). The printed paper normalisation can give negative
    weights when some alpha < 0 (v_min < 0); the ReLU features of a ResNet teacher give alpha >= 0, so it
    does not arise in practice, but use ``STForm.AUTHORS_CODE`` for arbitrary teachers.
    """
    a = alpha.detach()
    if form is STForm.AUTHORS_CODE:
        a = a.clamp(0.0, 1.0)
        vote_threshold = CODE_VOTE_THRESHOLD if vote_threshold is None else vote_threshold
    if vote_threshold is not None:
        a = torch.where(a >= vote_threshold, a, torch.zeros_like(a))
    v = a.sum(1)
    v = v - v.min()
    den = v.max() if form is STForm.AUTHORS_CODE else a.sum(1).max()
    v = torch.where(den != 0, v / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(v))
    return 1.0 - v


def semantically_tolerant_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    alpha: torch.Tensor,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    tolerance: Tolerance = Tolerance.KNN,
    k_fraction: float = 0.01,
    alpha_min: float = 0.0,
    balance: bool = True,
    form: STForm = STForm.PAPER,
    vote_threshold: float | None = None,
    adaptive_k: bool = False,
) -> torch.Tensor:
    """L_ST (Eq. 7; L_knn / L_alpha without ``balance``) of anchors q (M, F), targets k (M, F), alpha (M, M).

    Args:
        tolerance: KNN (Eqs. 5-6, ST-SLidR), ALPHA (Eq. 2) or NONE.
        k_fraction: PAPER: K = floor(k_fraction * M) excluded neighbours; AUTHORS_CODE: ``min_quantile``.
        alpha_min: L_alpha threshold (alpha < alpha_min counts as 0).
        adaptive_k: beyond the papers; K_i = round(K v_i / mean v) grows with the anchor's aggregate
            similarity v_i = sum_{j!=i} max(alpha_ij, 0) (paper form, KNN only).
    """
    logits, rows, a = tolerant_logits(
        q,
        k,
        alpha,
        temperature=temperature,
        tolerance=tolerance,
        k_fraction=k_fraction,
        alpha_min=alpha_min,
        form=form,
        adaptive_k=adaptive_k,
    )
    if rows.numel() == 0:
        raise LossInputError("no anchor has a teacher feature: the ST-SLidR loss is undefined for this batch")
    per_anchor = infonce_per_anchor(logits)
    weights = class_agnostic_weights(a, form, vote_threshold) if balance else None
    return reduce_weighted(per_anchor, weights)


def st_slidr_loss(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    superpixels: torch.Tensor,
    pairing_superpixels: torch.Tensor | None = None,
    gather: Gather | None = None,
    **options: object,
) -> torch.Tensor:
    """ST-SLidR loss of a collated batch: SLidR pooling, teacher pooling, :func:`semantically_tolerant_loss`.

    ``teacher_feats`` (I, C, h, w) is the frozen pre-head backbone output (any resolution; the superpixel map
    is nearest-resized to it). ``options`` are the keyword arguments of :func:`semantically_tolerant_loss`.
    ``gather`` (under DDP) makes the M superpixels those of every process: negatives, K and the balancing
    votes are then computed over the global batch, as on one GPU.
    """
    pooled = pool_superpixels(
        point_feats, image_feats, pairing_points, pairing_images, superpixels, pairing_superpixels
    )
    gather = gather or identity
    teacher = gather(pool_image_features(teacher_feats.detach(), superpixels, pooled.ids))
    q, k = gather(pooled.points), gather(pooled.pixels)
    if q.shape[0] == 0:
        raise LossInputError(
            "no superpixel has a paired point: the ST-SLidR loss is undefined for this batch"
        )
    alpha = teacher_similarity(teacher)
    return semantically_tolerant_loss(q, k, alpha, **options)  # type: ignore[arg-type]


def sample_teacher_at_pixels(
    teacher_feats: torch.Tensor, pairing_images: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Teacher features (P, C) at pixels [image, row, col] of an (H, W) image, bilinear"
    " (align_corners=True)."""
    h, w = image_size
    th, tw = teacher_feats.shape[2:]
    if (th, tw) == (h, w):
        return gather_pixel_features(teacher_feats, pairing_images)
    img, row, col = pairing_images.long().unbind(1)
    x = 2.0 * col.to(teacher_feats.dtype) / max(w - 1, 1) - 1.0
    y = 2.0 * row.to(teacher_feats.dtype) / max(h - 1, 1) - 1.0
    grid = torch.stack([x, y], 1)[:, None, None, :]  # (P, 1, 1, 2)
    out = F.grid_sample(teacher_feats[img], grid, mode="bilinear", align_corners=True)
    return out[:, :, 0, 0]


def st_ppkt_loss(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    *,
    num_matches: int = DEFAULT_NUM_MATCHES,
    generator: torch.Generator | None = None,
    balance: bool = False,
    gather: Gather | None = None,
    **options: object,
) -> torch.Tensor:
    """ST-PPKT: L_knn on ``num_matches`` sampled point-pixel pairs with pixel-to-pixel teacher similarity.

    Balancing is off by default (the supplement found it noisy at pixel level). ``teacher_feats`` (I, C, h, w)
    is sampled bilinearly at the pairs' pixels of ``image_feats`` (I, F, H, W).
    """
    check_features("point_feats", point_feats)
    check_pairing_images(image_feats, pairing_images)
    check_index("pairing_points", pairing_points, point_feats.shape[0], "rows of point_feats")
    if pairing_points.shape[0] != pairing_images.shape[0]:
        raise LossInputError(
            f"pairing_points {tuple(pairing_points.shape)} and pairing_images"
            f" {tuple(pairing_images.shape)} differ"
        )
    if teacher_feats.ndim != 4 or teacher_feats.shape[0] != image_feats.shape[0]:
        raise LossInputError(
            f"teacher_feats must be (I={image_feats.shape[0]}, C, h, w), got {tuple(teacher_feats.shape)}"
        )
    idx = sample_pairs(pairing_points.shape[0], num_matches, generator, device=point_feats.device)
    pix = pairing_images[idx]
    q = point_feats[pairing_points[idx]]
    k = gather_pixel_features(image_feats, pix)
    teacher = sample_teacher_at_pixels(
        teacher_feats.detach(), pix, (image_feats.shape[2], image_feats.shape[3])
    )
    gather = gather or identity
    alpha = teacher_similarity(gather(teacher))
    return semantically_tolerant_loss(
        gather(q),
        gather(k),
        alpha,
        balance=balance,
        **options,  # type: ignore[arg-type]
    )
