"""ST-SLidR family corrections: anchors without a teacher feature, vote normalisation, the authors' transposed
pixel sampling, and per-anchor diagnostics (also of PPKT and SLidR); against slow transcriptions (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_losses import _batch, _check, _st_inputs, _unit, slow_st_code, slow_st_paper

from lidar_ssl_core.losses import (
    STForm,
    TolerantOptions,
    VoteNorm,
    pool_image_features,
    pool_superpixels,
    ppkt_details,
    ppkt_loss,
    semantically_tolerant_details,
    semantically_tolerant_loss,
    slidr_details,
    slidr_loss,
    st_ppkt_details,
    st_slidr_details,
    st_slidr_loss,
    teacher_similarity,
)
from lidar_ssl_core.losses.st_slidr import class_agnostic_weights, sample_teacher_at_pixels

D = torch.float64


def _without(x: torch.Tensor, i: int) -> torch.Tensor:
    keep = [j for j in range(x.shape[0]) if j != i]
    return x[keep][:, keep] if x.ndim == 2 and x.shape[0] == x.shape[1] else x[keep]


@pytest.mark.parametrize("balance", [False, True])
def test_paper_form_drops_anchors_without_teacher_feature(balance: bool) -> None:
    q, k, alpha = _st_inputs(zero_row=True)  # anchor 5 has an all-zero teacher feature
    assert float(alpha[5].abs().sum()) == 0.0
    opts = TolerantOptions(k_fraction=0.1, balance=balance)
    details = semantically_tolerant_details(q, k, alpha, opts)
    assert details.dropped.tolist() == [5] and 5 not in details.anchors.tolist()
    assert details.per_anchor.shape == (23,)

    def slow() -> torch.Tensor:
        return slow_st_paper(
            _without(q, 5), _without(k, 5), _without(alpha, 5), "knn", 0.1, balance=balance, norm="minmax"
        )

    _check(lambda: semantically_tolerant_loss(q, k, alpha, opts), slow, q, k)
    grads = torch.autograd.grad(semantically_tolerant_loss(q, k, alpha, opts), (q, k))
    assert all(float(g[5].abs().max()) == 0.0 for g in grads)  # neither anchor nor negative


@pytest.mark.parametrize("balance", [False, True])
def test_code_form_still_matches_its_transcription(balance: bool) -> None:
    q, k, alpha = _st_inputs(zero_row=True)
    opts = TolerantOptions(k_fraction=0.1, balance=balance, form=STForm.AUTHORS_CODE)
    details = semantically_tolerant_details(q, k, alpha, opts)
    assert details.dropped.tolist() == [5]
    _check(lambda: details.loss, lambda: slow_st_code(q, k, alpha, 0.1, balance=balance), q, k)


def test_vote_normalisations() -> None:
    q, k, alpha = _st_inputs(m=30, seed=3)
    minmax = class_agnostic_weights(alpha)
    printed = class_agnostic_weights(alpha, vote_norm=VoteNorm.PRINTED)
    votes = alpha.sum(1)
    assert float(minmax.min()) == 0.0 and float(minmax.max()) == 1.0  # rarest 1, most common 0
    lower = float(votes.min() / votes.max())
    assert float(printed.min()) == pytest.approx(lower) and float(printed.max()) == 1.0  # narrow band
    opts = TolerantOptions(k_fraction=0.1)
    assert opts.vote_norm is VoteNorm.MINMAX  # the default, both forms
    _check(
        lambda: semantically_tolerant_loss(q, k, alpha, opts),
        lambda: slow_st_paper(q, k, alpha, "knn", 0.1, norm="minmax"),
        q,
        k,
    )
    constant = torch.ones(4, 4, dtype=D)  # all votes equal: unweighted
    assert torch.equal(class_agnostic_weights(constant), torch.ones(4, dtype=D))


def test_details_reproduce_the_loss() -> None:
    q, k, alpha = _st_inputs(m=20, seed=4)
    d = semantically_tolerant_details(q, k, alpha, TolerantOptions(k_fraction=0.1))
    assert d.weights is not None and d.kept_negatives is not None
    expected = (d.weights * d.per_anchor).sum() / d.weights.sum()
    assert float(d.loss.detach()) == pytest.approx(float(expected.detach()))
    assert torch.equal((~d.kept_negatives).sum(1), torch.full((20,), 2))  # K = floor(0.1 * 20)
    assert d.kept_negatives.diagonal().all()
    plain = semantically_tolerant_details(q, k, alpha, TolerantOptions(k_fraction=0.0, balance=False))
    assert plain.weights is None
    assert float(plain.loss.detach()) == pytest.approx(float(plain.per_anchor.mean().detach()))


def _vanishing_batch() -> dict[str, torch.Tensor]:
    """1 image 6x8, superpixel 9 is the single pixel (1, 1): absent at the 3x4 teacher resolution."""
    g = torch.Generator().manual_seed(0)
    sp = torch.zeros(1, 6, 8, dtype=torch.long)
    sp[:, :, 4:] = 1
    sp[:, 3:, :] += 2
    sp[0, 1, 1] = 9
    rows = torch.tensor([1, 0, 2, 4, 5, 0, 3, 5, 1, 4])
    cols = torch.tensor([1, 0, 6, 1, 7, 5, 2, 4, 3, 6])
    pix = torch.stack([torch.zeros_like(rows), rows, cols], 1)
    return {
        "points": _unit(10, 5, seed=1).requires_grad_(),
        "images": F.normalize(torch.randn(1, 5, 6, 8, generator=g, dtype=D), dim=1),
        "teacher": torch.randn(1, 16, 3, 4, generator=g, dtype=D).abs(),
        "pairing_points": torch.arange(10),
        "pairing_images": pix,
        "superpixels": sp,
    }


@pytest.mark.parametrize("form", [STForm.PAPER, STForm.AUTHORS_CODE])
def test_superpixel_vanishing_at_teacher_resolution_is_dropped(form: STForm) -> None:
    """The code form's nearest-resized pooling loses superpixel 9; the paper form's area pooling keeps it,
    so there it is given no teacher feature explicitly (a zero cell holding only 9 and part of 0)."""
    b = _vanishing_batch()
    if form is STForm.PAPER:
        b["teacher"][:, :, 0, 0] = 0.0
    opts = TolerantOptions(k_fraction=0.3, form=form)
    args = (
        b["points"],
        b["images"],
        b["teacher"],
        b["pairing_points"],
        b["pairing_images"],
        b["superpixels"],
    )
    d = st_slidr_details(*args, options=opts)
    assert d.dropped.tolist() == [9] and d.anchors.tolist() == [0, 1, 2, 3]
    keep = b["pairing_images"][:, 1:].ne(torch.tensor([1, 1])).any(1)  # the batch without superpixel 9
    without = st_slidr_loss(
        b["points"],
        b["images"],
        b["teacher"],
        b["pairing_points"][keep],
        b["pairing_images"][keep],
        b["superpixels"],
        options=opts,
    )
    assert float(d.loss.detach()) == pytest.approx(float(without.detach()), rel=1e-12)


def slow_bilinear_zeros(fmap: torch.Tensor, px: float, py: float) -> torch.Tensor:
    """Bilinear sample of (C, h, w) at pixel coordinates (px, py) with zeros outside the map."""
    c, h, w = fmap.shape
    x0, y0 = math.floor(px), math.floor(py)
    out = fmap.new_zeros(c)
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        weight = (1 - abs(px - xx)) * (1 - abs(py - yy))
        if 0 <= xx < w and 0 <= yy < h and weight > 0:
            out = out + weight * fmap[:, yy, xx]
    return out


def test_teacher_sampling_correct_transposed_and_patch_centres() -> None:
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(2, 3, 5, 9, generator=g, dtype=D)
    h, w = 20, 36  # image larger than the map; width > height as in the crops
    pix = torch.stack(
        [
            torch.randint(0, 2, (40,), generator=g),
            torch.randint(0, h, (40,), generator=g),
            torch.randint(0, w, (40,), generator=g),
        ],
        1,
    )
    swapped = sample_teacher_at_pixels(teacher, pix, (h, w), swap_axes=True)
    correct = sample_teacher_at_pixels(teacher, pix, (h, w))
    for p, (i, r, c) in enumerate(pix.tolist()):
        # the released code: x = 2 row / W - 1, y = 2 col / H - 1, align_corners=True
        sx, sy = (2 * r / w) * (9 - 1) / 2, (2 * c / h) * (5 - 1) / 2
        torch.testing.assert_close(swapped[p], slow_bilinear_zeros(teacher[i], sx, sy))
        cx, cy = c * (9 - 1) / (w - 1), r * (5 - 1) / (h - 1)
        torch.testing.assert_close(correct[p], slow_bilinear_zeros(teacher[i], cx, cy))
    assert int((swapped.abs().sum(1) == 0).sum()) > 0  # columns past the image height sample nothing
    # patch maps: pixel centres, the same as upsampling x14 (ScaLR) and indexing the pixel
    up = F.interpolate(teacher, scale_factor=4, mode="bilinear", align_corners=False)
    centres = sample_teacher_at_pixels(teacher, pix, (20, 36), align_corners=False)
    torch.testing.assert_close(centres, up[pix[:, 0], :, pix[:, 1], pix[:, 2]])


def test_st_ppkt_swapped_sampling_option_and_pair_indices() -> None:
    g = torch.Generator().manual_seed(2)
    images = F.normalize(torch.randn(1, 4, 8, 12, generator=g, dtype=D), dim=1)
    teacher = torch.randn(1, 6, 2, 3, generator=g, dtype=D).abs() + 0.1
    pix = torch.stack(
        [
            torch.zeros(30, dtype=torch.long),
            torch.randint(0, 8, (30,), generator=g),
            torch.randint(0, 12, (30,), generator=g),
        ],
        1,
    )
    points = _unit(30, 4, seed=5)
    args = (points, images, teacher, torch.arange(30), pix)
    opts = TolerantOptions(k_fraction=0.1, balance=False)
    gen = torch.Generator().manual_seed(0)
    d = st_ppkt_details(*args, options=opts, num_matches=20, swap_teacher_axes=True, generator=gen)
    idx = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:20]
    t = sample_teacher_at_pixels(teacher, pix[idx], (8, 12), swap_axes=True)
    has = t.abs().sum(1) != 0
    assert sorted(d.anchors.tolist() + d.dropped.tolist()) == sorted(idx.tolist())
    assert d.dropped.tolist() == idx[~has].tolist()
    kept = has.nonzero().squeeze(1)
    expected = slow_st_paper(
        points[idx][kept],
        images[0, :, pix[idx][kept, 1], pix[idx][kept, 2]].T,
        teacher_similarity(t[kept]),
        "knn",
        0.1,
        balance=False,
    )
    assert float(d.loss) == pytest.approx(float(expected), rel=1e-9)


def test_ppkt_and_slidr_details() -> None:
    b = _batch()
    args = (b["points"], b["images"], b["pairing_points"], b["pairing_images"], b["superpixels"])
    d = slidr_details(*args)
    pooled = pool_superpixels(*args)
    assert torch.equal(d.anchors, pooled.ids) and d.dropped.numel() == 0 and d.weights is None
    assert float(d.loss.detach()) == pytest.approx(float(slidr_loss(*args).detach()), rel=1e-12)
    assert float(d.loss.detach()) == pytest.approx(float(d.per_anchor.mean().detach()), rel=1e-12)
    pts, pix = _unit(50, 8, seed=1), _unit(70, 8, seed=2)
    pairing = torch.randint(0, 50, (70,), generator=torch.Generator().manual_seed(3))
    p = ppkt_details(pts, pix, pairing, num_matches=20, generator=torch.Generator().manual_seed(7))
    idx = torch.randperm(70, generator=torch.Generator().manual_seed(7))[:20]
    assert torch.equal(p.anchors, idx) and p.per_anchor.shape == (20,)
    loss = ppkt_loss(pts, pix, pairing, num_matches=20, generator=torch.Generator().manual_seed(7))
    assert float(p.loss) == pytest.approx(float(loss), rel=1e-12)


def test_paper_form_pools_the_teacher_over_every_pixel_of_a_superpixel() -> None:
    """A ViT/14 map: each pixel takes the patch holding its centre (not the top-left pixel's superpixel per
    patch, which moved half the patches of real nuScenes crops to a neighbour), and nothing vanishes."""
    g = torch.Generator().manual_seed(3)
    H, W, h, w = 42, 70, 3, 5
    sp = torch.randint(0, 30, (1, H, W), generator=g)
    sp[0, 20, 33] = 30  # a one-pixel superpixel: vanishes under nearest resizing
    teacher = torch.randn(1, 6, h, w, generator=g, dtype=D)
    ids = torch.unique(sp)
    rows = ((torch.arange(H) + 0.5) * h / H).floor().long()
    cols = ((torch.arange(W) + 0.5) * w / W).floor().long()
    up = teacher[:, :, rows][:, :, :, cols].permute(0, 2, 3, 1)
    expected = torch.stack([up[sp == s].mean(0) for s in ids.tolist()])
    got = pool_image_features(teacher, sp, ids, area=True)
    assert float((got - expected).abs().max()) < 1e-12
    assert bool(pool_image_features(teacher, sp, ids)[-1].eq(0).all())  # nearest: 30 vanished
    pix = torch.tensor([[0, 20, 33], [0, 0, 0], [0, 41, 69], [0, 10, 50]])
    points = _unit(4, 5, seed=2)
    images = F.normalize(torch.randn(1, 5, H, W, generator=g, dtype=D), dim=1)
    d = st_slidr_details(points, images, teacher, torch.arange(4), pix, sp, options=TolerantOptions())
    assert d.dropped.numel() == 0 and 30 in d.anchors.tolist()
