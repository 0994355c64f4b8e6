"""ST-SLidR: semantically tolerant InfoNCE with class-agnostic balancing (Mahmoud et al., CVPR 2023).

Anchors q_i (pooled points), targets k_j (pooled pixels), logits s_ij = <q_i, k_j>/tau, and the semantic
similarity alpha_ij = <f_i, f_j> of the l2-normalised pooled features f of the *frozen* 2D backbone (pre-head,
2048-d for ResNet-50), computed over all M superpixels of the batch (no gradient flows through alpha).

* L_alpha (Eq. 2): negatives' logits scaled by (1 - alpha_ij), with alpha_ij < alpha_min set to 0:
      L_i = -log( e^{s_ii} / ( e^{s_ii} + sum_{j!=i} e^{(1-alpha_ij) s_ij} ) )
* L_knn (Eqs. 5-6): alpha_iK = K-th largest alpha_ij over j != i, C_ij = [alpha_ij < alpha_iK]:
      L_i = -log( e^{s_ii} / ( e^{s_ii} + sum_{j!=i} C_ij e^{s_ij} ) ),   K = floor(k_fraction * M)
* Balancing (Eq. 7): v_i = sum_j alpha_ij, v_i <- (v_i - v_min) / (v_max - v_min), w_i = 1 - v_i,
      L_ST = sum_i w_i L_i / sum_i w_i          (without balancing: mean_i L_i)

The teacher feature of a superpixel is the mean over its pixels of the frozen map, each pixel taking the
map cell that holds its centre (``PAPER``; nothing vanishes, nothing is shifted) or, as the released code
does, of the cells whose top-left pixel it owns after nearest-resizing the superpixels (``AUTHORS_CODE``;
at a ViT's stride 14 that moves about half the patches of a nuScenes crop to a neighbouring superpixel).
Anchors without a teacher feature (a superpixel that vanishes under nearest resizing pools to a zero
vector; a pixel sampled outside the map is zero) have an all-zero alpha row and column, alpha_ii = 0. Both
forms drop them (as anchors and as negatives) before anything else: kept, such an anchor loses every
negative in the paper's kNN (loss 0 with weight 1), pulls v_min to 0 and shifts every other weight.

Vote normalisation (:class:`VoteNorm`): the paper's text says "min-max normalization" while its printed
formula divides by v_max. ``minmax`` (default, both forms) is the text, the authors' code and the stated
intent (the most common anchor weighs 0, the rarest 1, w in [0, 1] whatever the sign of alpha); ``printed``
(v - v_min) / v_max leaves w in [v_min / v_max, 1], a narrow band when the votes are similar (e.g. w >= 0.8
when v_min = 0.8 v_max), i.e. almost no balancing, and negative w when v_min < 0.

:class:`STForm` picks between the paper and the authors' code (TRAILab/ST-SLidR ``NCELoss`` +
``loss_superpixel_stslidr_classbalance``), which differ:

=====================  =========================================  ============================================
                       ``STForm.PAPER`` (default)                 ``STForm.AUTHORS_CODE``
=====================  =========================================  ============================================
alpha                  as computed                                clipped to [0, 1]
excluded negatives     removed from the denominator (logit -inf)  logit multiplied by 0 (still adds e^0)
kNN                    K = floor(k_fraction*M) largest alpha_ij,  per-row linear ``k_fraction``-quantile of
                       j != i (ties with the K-th also removed)   1-alpha over all j (diagonal included),
                                                                  entries strictly below it masked; entries
                                                                  with alpha == 1 also masked
L_alpha                (1 - alpha') s_ij                           (1 - clip(alpha')) s_ij
votes                  sum_j alpha_ij (diagonal included)         same after zeroing alpha < 0.5 (noise)
teacher pooling        every pixel, cell holding its centre       nearest-resized superpixels (top-left)
no teacher feature     dropped (alpha_ii == 0)                    dropped (clipped row sums to 0)
=====================  =========================================  ============================================

The paper form is the default because it is what the paper specifies and analyses (Eq. 4 gradients); the code
form follows the released ``NCELoss`` / ``loss_superpixel_stslidr_classbalance`` (the README's configs).
ST-PPKT (supplement §A) is L_knn on sampled point-pixel pairs; the released code has no ST-PPKT config, so
there are no released ST-PPKT numbers to reproduce. Its pixel-level functions sample the frozen features
with ``grid_sample`` at (x, y) = (row, col), each normalised by the other axis's size: the transposed
position, zero (padding) for columns beyond the crop height. ``st_ppkt_loss(swap_teacher_axes=True)``
reproduces that sampling explicitly; it is off by default (the correct pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.loss_options import (
    DEFAULT_NUM_MATCHES,
    DEFAULT_TEMPERATURE,
    STForm,
    Tolerance,
    VoteNorm,
)
from lidar_ssl_core.losses.gather import Gather, identity
from lidar_ssl_core.losses.infonce import (
    LossDetails,
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


@dataclass(frozen=True)
class TolerantOptions:
    """Settings of the semantically tolerant loss (defaults = the paper's ST-SLidR).

    temperature: InfoNCE tau. tolerance: KNN (Eqs. 5-6), ALPHA (Eq. 2) or NONE. k_fraction: PAPER:
    K = floor(k_fraction * M) excluded neighbours; AUTHORS_CODE: the per-row ``min_quantile``. alpha_min:
    L_alpha threshold (alpha < alpha_min counts as 0). balance: Eq. 7 anchor weights. form: PAPER or
    AUTHORS_CODE (module table). vote_threshold: similarities below it do not vote (None: none for the paper,
    0.5 for the code). vote_norm: MINMAX or PRINTED (module docstring). adaptive_k: beyond the papers,
    K_i = round(K v_i / mean v) grows with the anchor's aggregate similarity (paper form, KNN only).
    """

    temperature: float = DEFAULT_TEMPERATURE
    tolerance: Tolerance = Tolerance.KNN
    k_fraction: float = 0.01
    alpha_min: float = 0.0
    balance: bool = True
    form: STForm = STForm.PAPER
    vote_threshold: float | None = None
    vote_norm: VoteNorm = VoteNorm.MINMAX
    adaptive_k: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise LossInputError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.k_fraction < 1.0:
            raise LossInputError(f"k_fraction must be in [0, 1), got {self.k_fraction}")
        if self.adaptive_k and (self.form is not STForm.PAPER or self.tolerance is not Tolerance.KNN):
            raise LossInputError("adaptive_k is only defined for STForm.PAPER with Tolerance.KNN")


#: ST-PPKT's defaults: balancing off (the supplement found it noisy at pixel level).
ST_PPKT_DEFAULTS = TolerantOptions(balance=False)


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


def has_teacher_feature(alpha: torch.Tensor, form: STForm) -> torch.Tensor:
    """(M,) bool: anchors with a teacher feature (paper: alpha_ii != 0; code: clipped row sum != 0)."""
    if form is STForm.AUTHORS_CODE:
        return alpha.clamp(0.0, 1.0).sum(1) != 0
    return alpha.diagonal() != 0


def tolerant_logits(
    q: torch.Tensor, k: torch.Tensor, alpha: torch.Tensor, options: TolerantOptions = TolerantOptions()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Logits (M', M') of the tolerant loss, the kept anchors (M',), their alpha (M', M') and kept negatives.

    M' anchors have a teacher feature (the others are dropped, rows and columns). The last item is the bool
    (M', M') mask of negatives that still count (None when all do, as with L_alpha or no tolerance).
    """
    check_features("q", q)
    check_features("k", k)
    check_same_shape("q", q, "k", k)
    m = q.shape[0]
    if alpha.shape != (m, m):
        raise LossInputError(
            f"alpha must be (M, M) = ({m}, {m}) for q {tuple(q.shape)}, got {tuple(alpha.shape)}"
        )
    alpha = alpha.detach().to(q.dtype)
    logits = q @ k.T / options.temperature
    rows = torch.nonzero(has_teacher_feature(alpha, options.form)).squeeze(1)
    if rows.numel() < m:
        alpha, logits = alpha[rows][:, rows], logits[rows][:, rows]
    n = rows.numel()
    if options.form is STForm.PAPER:
        if options.tolerance is Tolerance.KNN:
            kk = num_excluded(n, options.k_fraction)
            keep = knn_keep_mask(alpha, _adaptive_k(alpha, kk) if options.adaptive_k else kk)
            return logits.masked_fill(~keep, -math.inf), rows, alpha, keep
        if options.tolerance is Tolerance.ALPHA:
            a = torch.where(alpha >= options.alpha_min, alpha, torch.zeros_like(alpha))
            return logits * (1.0 - a).fill_diagonal_(1.0), rows, alpha, None
        return logits, rows, alpha, None
    sim = alpha.clamp(0.0, 1.0)
    if options.tolerance is Tolerance.NONE:
        return logits, rows, sim, None
    if options.tolerance is Tolerance.ALPHA:
        weight = 1.0 - torch.where(sim >= options.alpha_min, sim, torch.zeros_like(sim))
        return logits * weight.fill_diagonal_(1.0), rows, sim, None
    weight = 1.0 - sim
    if options.k_fraction > 0.0 and n > 0:
        thr = row_quantile(weight, options.k_fraction).unsqueeze(1)
        weight = torch.where((weight < thr) | (weight == 0), 0.0, 1.0).to(weight.dtype)
    weight = weight.fill_diagonal_(1.0)
    return logits * weight, rows, sim, weight != 0


def class_agnostic_weights(
    alpha: torch.Tensor,
    form: STForm = STForm.PAPER,
    vote_threshold: float | None = None,
    vote_norm: VoteNorm = VoteNorm.MINMAX,
) -> torch.Tensor:
    """Eq. 7 anchor weights w_i = 1 - v_i (M,) from the similarity (M, M) (see the module docstring).

    ``vote_threshold``: similarities below it do not vote (default: none for the paper, 0.5 for the code).
    A zero denominator (all votes equal) gives v = 0, i.e. w = 1 (unweighted).
    """
    a = alpha.detach()
    if form is STForm.AUTHORS_CODE:
        a = a.clamp(0.0, 1.0)
        vote_threshold = CODE_VOTE_THRESHOLD if vote_threshold is None else vote_threshold
    if vote_threshold is not None:
        a = torch.where(a >= vote_threshold, a, torch.zeros_like(a))
    votes = a.sum(1)
    v = votes - votes.min()
    den = v.max() if vote_norm is VoteNorm.MINMAX else votes.max()
    v = torch.where(den != 0, v / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(v))
    return 1.0 - v


def semantically_tolerant_details(
    q: torch.Tensor, k: torch.Tensor, alpha: torch.Tensor, options: TolerantOptions = TolerantOptions()
) -> LossDetails:
    """L_ST with its per-anchor terms; ``anchors``/``dropped`` are rows of q (:class:`LossDetails`)."""
    logits, rows, a, keep = tolerant_logits(q, k, alpha, options)
    if rows.numel() == 0:
        raise LossInputError("no anchor has a teacher feature: the ST-SLidR loss is undefined for this batch")
    per_anchor = infonce_per_anchor(logits)
    weights = (
        class_agnostic_weights(a, options.form, options.vote_threshold, options.vote_norm)
        if options.balance
        else None
    )
    dropped = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
    dropped[rows] = False
    return LossDetails(
        loss=reduce_weighted(per_anchor, weights),
        per_anchor=per_anchor,
        weights=weights,
        anchors=rows,
        dropped=torch.nonzero(dropped).squeeze(1),
        kept_negatives=keep,
    )


def semantically_tolerant_loss(
    q: torch.Tensor, k: torch.Tensor, alpha: torch.Tensor, options: TolerantOptions = TolerantOptions()
) -> torch.Tensor:
    """L_ST (Eq. 7; L_knn / L_alpha without balancing) of anchors q (M, F), targets k (M, F), alpha (M, M)."""
    return semantically_tolerant_details(q, k, alpha, options).loss


def st_slidr_details(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    superpixels: torch.Tensor,
    pairing_superpixels: torch.Tensor | None = None,
    *,
    options: TolerantOptions = TolerantOptions(),
    gather: Gather | None = None,
) -> LossDetails:
    """:func:`st_slidr_loss` with per-anchor details; ``anchors``/``dropped`` are batch superpixel ids
    (without ``gather``; with it, rows of the gathered superpixels)."""
    pooled = pool_superpixels(
        point_feats, image_feats, pairing_points, pairing_images, superpixels, pairing_superpixels
    )
    gather = gather or identity
    area = options.form is STForm.PAPER  # the code form keeps the released nearest-resized pooling
    teacher = gather(pool_image_features(teacher_feats.detach(), superpixels, pooled.ids, area=area))
    q, k = gather(pooled.points), gather(pooled.pixels)
    if q.shape[0] == 0:
        raise LossInputError(
            "no superpixel has a paired point: the ST-SLidR loss is undefined for this batch"
        )
    details = semantically_tolerant_details(q, k, teacher_similarity(teacher), options)
    return details if gather is not identity else details.reindexed(pooled.ids)


def st_slidr_loss(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    superpixels: torch.Tensor,
    pairing_superpixels: torch.Tensor | None = None,
    *,
    options: TolerantOptions = TolerantOptions(),
    gather: Gather | None = None,
) -> torch.Tensor:
    """ST-SLidR loss of a collated batch: SLidR pooling, teacher pooling, :func:`semantically_tolerant_loss`.

    ``teacher_feats`` (I, C, h, w) is the frozen pre-head backbone output (any resolution; the superpixel map
    is nearest-resized to it, and a superpixel that vanishes there has no teacher feature and is dropped).
    ``gather`` (under DDP) makes the M superpixels those of every process: negatives, K and the balancing
    votes are then computed over the global batch, as on one GPU.
    """
    return st_slidr_details(
        point_feats,
        image_feats,
        teacher_feats,
        pairing_points,
        pairing_images,
        superpixels,
        pairing_superpixels,
        options=options,
        gather=gather,
    ).loss


def sample_teacher_at_pixels(
    teacher_feats: torch.Tensor,
    pairing_images: torch.Tensor,
    image_size: tuple[int, int],
    *,
    align_corners: bool = True,
    swap_axes: bool = False,
) -> torch.Tensor:
    """Teacher features (P, C) at pixels [image, row, col] of an (H, W) image, bilinear.

    ``align_corners=True``: pixel 0 and H-1 are the map's first and last rows (ResNet maps, upsampled so);
    False: pixel centres, for patch maps that tile the (resized) image (ViTs; equal to upsampling the map
    with ``F.interpolate(align_corners=False)`` and indexing the pixel). ``swap_axes`` reproduces the
    ST-SLidR code's ``grid_sample`` call: x = 2 row / W - 1, y = 2 col / H - 1 (align_corners=True, zeros
    outside the map), i.e. a transposed position, and zero for columns past the image height.
    """
    h, w = image_size
    th, tw = teacher_feats.shape[2:]
    if (th, tw) == (h, w) and not swap_axes:
        return gather_pixel_features(teacher_feats, pairing_images)
    img, row, col = pairing_images.long().unbind(1)
    r, c = row.to(teacher_feats.dtype), col.to(teacher_feats.dtype)
    if swap_axes:
        x, y, align_corners = 2.0 * r / w - 1.0, 2.0 * c / h - 1.0, True
    elif align_corners:
        x, y = 2.0 * c / max(w - 1, 1) - 1.0, 2.0 * r / max(h - 1, 1) - 1.0
    else:
        x, y = (2.0 * c + 1.0) / w - 1.0, (2.0 * r + 1.0) / h - 1.0
    grid = torch.stack([x, y], 1)  # (P, 2)
    padding = "zeros" if swap_axes else "border"  # border: edge pixels as F.interpolate's upsampling
    out = teacher_feats.new_empty((grid.shape[0], teacher_feats.shape[1]))
    # one grid_sample per image: indexing the maps per pair would copy a whole map for every pair
    for i in torch.unique(img).tolist():
        sel = torch.nonzero(img == i).squeeze(1)
        sampled = F.grid_sample(
            teacher_feats[i : i + 1],
            grid[sel].view(1, 1, -1, 2),
            mode="bilinear",
            padding_mode=padding,
            align_corners=align_corners,
        )
        out[sel] = sampled[0, :, 0].T
    return out


def st_ppkt_details(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    *,
    options: TolerantOptions = ST_PPKT_DEFAULTS,
    num_matches: int = DEFAULT_NUM_MATCHES,
    teacher_align_corners: bool = True,
    swap_teacher_axes: bool = False,
    generator: torch.Generator | None = None,
    gather: Gather | None = None,
) -> LossDetails:
    """:func:`st_ppkt_loss` with per-anchor details; ``anchors``/``dropped`` are indices of the pairs
    (without ``gather``; with it, rows of the gathered samples)."""
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
        teacher_feats.detach(),
        pix,
        (image_feats.shape[2], image_feats.shape[3]),
        align_corners=teacher_align_corners,
        swap_axes=swap_teacher_axes,
    )
    gather = gather or identity
    alpha = teacher_similarity(gather(teacher))
    details = semantically_tolerant_details(gather(q), gather(k), alpha, options)
    return details if gather is not identity else details.reindexed(idx)


def st_ppkt_loss(
    point_feats: torch.Tensor,
    image_feats: torch.Tensor,
    teacher_feats: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    *,
    options: TolerantOptions = ST_PPKT_DEFAULTS,
    num_matches: int = DEFAULT_NUM_MATCHES,
    teacher_align_corners: bool = True,
    swap_teacher_axes: bool = False,
    generator: torch.Generator | None = None,
    gather: Gather | None = None,
) -> torch.Tensor:
    """ST-PPKT: L_knn on ``num_matches`` sampled point-pixel pairs with pixel-to-pixel teacher similarity.

    Balancing is off by default (:data:`ST_PPKT_DEFAULTS`). ``teacher_feats`` (I, C, h, w) is sampled
    bilinearly at the pairs' pixels of ``image_feats`` (I, F, H, W): ``teacher_align_corners`` True for
    ResNet maps, False (pixel centres) for ViT patch maps; ``swap_teacher_axes`` reproduces the authors'
    transposed sampling (module docstring).
    """
    return st_ppkt_details(
        point_feats,
        image_feats,
        teacher_feats,
        pairing_points,
        pairing_images,
        options=options,
        num_matches=num_matches,
        teacher_align_corners=teacher_align_corners,
        swap_teacher_axes=swap_teacher_axes,
        generator=generator,
        gather=gather,
    ).loss
