"""Losses against slow, loop-by-loop transcriptions of their equations (float64), plus invariances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lidar_ssl_core.losses import (
    LossInputError,
    STForm,
    Tolerance,
    TolerantOptions,
    VoteNorm,
    pool_superpixels,
    ppkt_loss,
    semantically_tolerant_loss,
    slidr_loss,
    st_ppkt_loss,
    st_slidr_loss,
    teacher_similarity,
)
from lidar_ssl_core.losses.st_slidr import _adaptive_k, knn_keep_mask, row_quantile

TAU = 0.07
D = torch.float64


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=D), dim=-1)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """2 images 6x7, F=5, 30 points, 40 pairs; superpixel ids batch-unique, one superpixel without pairs."""
    g = torch.Generator().manual_seed(seed)
    n_img, h, w, f = 2, 6, 7, 5
    sp = torch.zeros(n_img, h, w, dtype=torch.long)
    sp[:, :, 3:] = 1
    sp[:, 3:, :] += 2
    sp[1] += 4  # ids 0..7
    pix = torch.stack(
        [
            torch.randint(0, n_img, (40,), generator=g),
            torch.randint(0, h, (40,), generator=g),
            torch.randint(0, w, (40,), generator=g),
        ],
        1,
    )
    keep = sp[pix[:, 0], pix[:, 1], pix[:, 2]] != 7  # superpixel 7 gets no pair (dropped)
    pix = pix[keep]
    pts = torch.randint(0, 30, (len(pix),), generator=g)
    img_feats = F.normalize(torch.randn(n_img, f, h, w, generator=g, dtype=D), dim=1)
    teacher = torch.randn(n_img, 16, h, w, generator=g, dtype=D)
    return {
        "points": _unit(30, f, seed=seed + 1).requires_grad_(),
        "images": img_feats.requires_grad_(),
        "pairing_points": pts,
        "pairing_images": pix,
        "superpixels": sp,
        "pairing_superpixels": sp[pix[:, 0], pix[:, 1], pix[:, 2]],
        "teacher": teacher,
    }


# ---------------------------------------------------------------- slow transcriptions (explicit loops)


def slow_pool(b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    sp = b["superpixels"]
    ids, qs, ks = [], [], []
    for s in range(int(sp.max()) + 1):
        pairs = [p for p in range(len(b["pairing_points"])) if int(b["pairing_superpixels"][p]) == s]
        if not pairs:
            continue
        q = sum(b["points"][int(b["pairing_points"][p])] for p in pairs) / len(pairs)
        pixels = [
            (i, r, c)
            for i in range(sp.shape[0])
            for r in range(sp.shape[1])
            for c in range(sp.shape[2])
            if int(sp[i, r, c]) == s
        ]
        k = sum(b["images"][i, :, r, c] for i, r, c in pixels) / len(pixels)
        ids.append(s)
        qs.append(q)
        ks.append(k)
    return torch.stack(qs), torch.stack(ks), ids


def slow_infonce(q: torch.Tensor, k: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    m = len(q)
    total = q.new_zeros(())
    for i in range(m):
        den = sum(torch.exp(q[i] @ k[j] / tau) for j in range(m))
        total = total - torch.log(torch.exp(q[i] @ k[i] / tau) / den)
    return total / m


def slow_st_paper(q, k, alpha, tolerance, k_frac=0.0, alpha_min=0.0, balance=True, kk=None, norm="printed"):  # type: ignore[no-untyped-def]
    m = len(q)
    big_k = math.floor(k_frac * m) if kk is None else kk
    losses = []
    for i in range(m):
        pos = torch.exp(q[i] @ k[i] / TAU)
        others = sorted((float(alpha[i, j]) for j in range(m) if j != i), reverse=True)
        den = pos
        for j in range(m):
            if j == i:
                continue
            s = q[i] @ k[j] / TAU
            if tolerance == "knn":
                k_i = big_k if isinstance(big_k, int) else int(big_k[i])
                if k_i == 0 or float(alpha[i, j]) < others[k_i - 1]:
                    den = den + torch.exp(s)
            else:
                a = float(alpha[i, j]) if float(alpha[i, j]) >= alpha_min else 0.0
                den = den + torch.exp((1 - a) * s)
        losses.append(-torch.log(pos / den))
    if not balance:
        return sum(losses) / m
    v = [sum(float(alpha[i, j]) for j in range(m)) for i in range(m)]
    den = max(v) if norm == "printed" else max(v) - min(v)
    w = [1 - (vi - min(v)) / den for vi in v]
    return sum(wi * li for wi, li in zip(w, losses, strict=True)) / sum(w)


def slow_quantile(row: list[float], q: float) -> float:
    s = sorted(row)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def slow_st_code(q, k, alpha, min_quantile, balance=True):  # type: ignore[no-untyped-def]
    m = len(q)
    sim = [[min(max(float(alpha[i, j]), 0.0), 1.0) for j in range(m)] for i in range(m)]
    keep = [i for i in range(m) if sum(sim[i]) != 0.0]
    losses = []
    for i in keep:
        weight = [1.0 - sim[i][j] for j in keep]
        thr = slow_quantile(weight, min_quantile)
        weight = [0.0 if wt < thr else wt for wt in weight]
        weight = [1.0 if wt != 0.0 else 0.0 for wt in weight]
        logits = [q[i] @ k[j] / TAU * (1.0 if j == i else weight[jj]) for jj, j in enumerate(keep)]
        den = sum(torch.exp(x) for x in logits)
        losses.append(-torch.log(torch.exp(logits[keep.index(i)]) / den))
    if not balance:
        return sum(losses) / len(keep)
    v = [sum(sim[i][j] if sim[i][j] >= 0.5 else 0.0 for j in keep) for i in keep]
    v = [vi - min(v) for vi in v]
    w = [1 - vi / max(v) for vi in v]
    return sum(wi * li for wi, li in zip(w, losses, strict=True)) / sum(w)


def _check(fast_fn, slow_fn, *tensors: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    a = fast_fn()
    ga = torch.autograd.grad(a, tensors)
    b = slow_fn()
    gb = torch.autograd.grad(b, tensors)
    assert a.item() == pytest.approx(b.item(), abs=1e-5, rel=1e-5)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- PPKT / SLidR


def test_ppkt_matches_slow_transcription() -> None:
    pts = _unit(50, 8, seed=1).requires_grad_()
    pix = _unit(70, 8, seed=2).requires_grad_()
    pairing = torch.randint(0, 50, (70,), generator=torch.Generator().manual_seed(3))
    fast = lambda: ppkt_loss(pts, pix, pairing, num_matches=20, generator=torch.Generator().manual_seed(7))  # noqa: E731
    idx = torch.randperm(70, generator=torch.Generator().manual_seed(7))[:20]
    _check(fast, lambda: slow_infonce(pts[pairing[idx]], pix[idx]), pts, pix)


def test_ppkt_uses_all_pairs_when_fewer_than_num_matches() -> None:
    pts, pix = _unit(12, 4, seed=1), _unit(12, 4, seed=2)
    a = ppkt_loss(pts, pix, generator=torch.Generator().manual_seed(0))
    b = ppkt_loss(pts, pix, generator=torch.Generator().manual_seed(1))
    assert a.item() == pytest.approx(b.item()) and a.item() == pytest.approx(slow_infonce(pts, pix).item())


def test_slidr_pooling_and_loss_match_slow_transcription() -> None:
    b = _batch()
    pooled = pool_superpixels(
        b["points"], b["images"], b["pairing_points"], b["pairing_images"], b["superpixels"]
    )
    q, k, ids = slow_pool(b)
    assert pooled.ids.tolist() == ids and 7 not in ids  # superpixel without pairs dropped
    torch.testing.assert_close(pooled.points, q)
    torch.testing.assert_close(pooled.pixels, k)
    fast = lambda: slidr_loss(  # noqa: E731
        b["points"],
        b["images"],
        b["pairing_points"],
        b["pairing_images"],
        b["superpixels"],
        b["pairing_superpixels"],
    )
    _check(fast, lambda: slow_infonce(*slow_pool(b)[:2]), b["points"], b["images"])


def test_slidr_invariant_to_superpixel_id_permutation_and_empty_superpixels() -> None:
    b = _batch()
    args = (b["points"], b["images"], b["pairing_points"], b["pairing_images"])
    ref = slidr_loss(*args, b["superpixels"], b["pairing_superpixels"])
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5)) + 3  # also leaves gaps 0..2 unused
    got = slidr_loss(*args, perm[b["superpixels"]], perm[b["pairing_superpixels"]])
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)


def test_slidr_loss_decreases_when_points_equal_their_pixels() -> None:
    b = _batch()
    pix = b["images"].detach()
    aligned = b["points"].detach().clone()
    pi = b["pairing_images"]
    aligned[b["pairing_points"]] = pix[pi[:, 0], :, pi[:, 1], pi[:, 2]]  # each point = one paired pixel
    args = (pix, b["pairing_points"], pi, b["superpixels"])
    random_loss = slidr_loss(b["points"].detach(), *args)
    aligned_loss = slidr_loss(aligned, *args)
    assert aligned_loss < random_loss - 0.1


# ---------------------------------------------------------------- ST-SLidR


def _st_inputs(m: int = 24, seed: int = 0, zero_row: bool = False):  # type: ignore[no-untyped-def]
    q = _unit(m, 6, seed=seed).requires_grad_()
    k = _unit(m, 6, seed=seed + 1).requires_grad_()
    teacher = torch.randn(m, 32, generator=torch.Generator().manual_seed(seed + 2), dtype=D) + 0.3
    if zero_row:
        teacher[5] = 0.0
    return q, k, teacher_similarity(teacher)


@pytest.mark.parametrize("balance", [False, True])
def test_st_knn_paper_form_matches_slow(balance: bool) -> None:
    q, k, alpha = _st_inputs()
    opts = TolerantOptions(k_fraction=0.1, balance=balance, vote_norm=VoteNorm.PRINTED)
    fast = lambda: semantically_tolerant_loss(q, k, alpha, opts)  # noqa: E731
    _check(fast, lambda: slow_st_paper(q, k, alpha, "knn", 0.1, balance=balance), q, k)


def test_st_alpha_paper_form_matches_slow() -> None:
    q, k, alpha = _st_inputs()
    opts = TolerantOptions(tolerance=Tolerance.ALPHA, alpha_min=0.2, vote_norm=VoteNorm.PRINTED)
    fast = lambda: semantically_tolerant_loss(q, k, alpha, opts)  # noqa: E731
    _check(fast, lambda: slow_st_paper(q, k, alpha, "alpha", alpha_min=0.2), q, k)


@pytest.mark.parametrize("balance", [False, True])
def test_st_knn_authors_code_form_matches_slow(balance: bool) -> None:
    q, k, alpha = _st_inputs(zero_row=True)
    opts = TolerantOptions(k_fraction=0.1, balance=balance, form=STForm.AUTHORS_CODE)
    fast = lambda: semantically_tolerant_loss(q, k, alpha, opts)  # noqa: E731
    _check(fast, lambda: slow_st_code(q, k, alpha, 0.1, balance=balance), q, k)


def test_forms_differ_and_zero_k_recovers_slidr() -> None:
    q, k, alpha = _st_inputs()
    paper = semantically_tolerant_loss(q, k, alpha, TolerantOptions(k_fraction=0.1, balance=False))
    code_opts = TolerantOptions(k_fraction=0.1, balance=False, form=STForm.AUTHORS_CODE)
    code = semantically_tolerant_loss(q, k, alpha, code_opts)
    assert abs(paper.item() - code.item()) > 1e-5
    plain = semantically_tolerant_loss(q, k, alpha, TolerantOptions(k_fraction=0.0, balance=False))
    assert plain.item() == pytest.approx(slow_infonce(q, k).item(), rel=1e-10)


def test_row_quantile_equals_torch_quantile() -> None:
    x = torch.rand(30, 257, generator=torch.Generator().manual_seed(0), dtype=D)
    for qq in (0.0, 0.01, 0.1, 0.5, 0.99):
        torch.testing.assert_close(row_quantile(x, qq), torch.quantile(x, qq, dim=1), atol=0, rtol=0)


def test_knn_mask_excludes_exactly_k_and_adaptive_k() -> None:
    _, _, alpha = _st_inputs(m=40)
    keep = knn_keep_mask(alpha, 3)
    assert ((~keep).sum(1) == 3).all() and keep.diagonal().all()
    k_i = _adaptive_k(alpha, 4)
    assert k_i.unique().numel() > 1  # K varies with the aggregate similarity
    keep = knn_keep_mask(alpha, k_i)
    assert torch.equal((~keep).sum(1), k_i)
    q, k, _ = _st_inputs(m=40)
    opts = TolerantOptions(k_fraction=0.1, adaptive_k=True, vote_norm=VoteNorm.PRINTED)
    fast = lambda: semantically_tolerant_loss(q, k, alpha, opts)  # noqa: E731
    _check(fast, lambda: slow_st_paper(q, k, alpha, "knn", kk=k_i), q, k)


def test_st_slidr_and_st_ppkt_batch_wrappers() -> None:
    b = _batch()
    args = (b["points"], b["images"], b["teacher"], b["pairing_points"], b["pairing_images"])
    loss = st_slidr_loss(
        *args, b["superpixels"], options=TolerantOptions(k_fraction=0.2, vote_norm=VoteNorm.PRINTED)
    )
    q, k, ids = slow_pool(b)
    t = torch.stack([b["teacher"].permute(0, 2, 3, 1)[b["superpixels"] == s].mean(0) for s in ids])
    expected = slow_st_paper(q, k, teacher_similarity(t), "knn", 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    loss.backward()
    assert b["points"].grad is not None and torch.isfinite(b["points"].grad).all()
    # ST-PPKT with teacher at the image resolution and with all pairs sampled
    # seeded: duplicated pixels make exact alpha ties, and the sampling order may flip them by rounding
    pp = st_ppkt_loss(
        *args,
        num_matches=1000,
        options=TolerantOptions(k_fraction=0.1, balance=False),
        generator=torch.Generator().manual_seed(0),
    )
    pi = b["pairing_images"]
    order = torch.randperm(
        len(pi), generator=torch.Generator().manual_seed(0)
    )  # any order: loss is invariant
    qs = b["points"][b["pairing_points"]][order]
    ks = b["images"][pi[:, 0], :, pi[:, 1], pi[:, 2]][order]
    ts = b["teacher"][pi[:, 0], :, pi[:, 1], pi[:, 2]][order]
    expected = slow_st_paper(qs, ks, teacher_similarity(ts), "knn", 0.1, balance=False)
    assert pp.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- errors


def test_shape_errors_name_the_shapes() -> None:
    b = _batch()
    with pytest.raises(LossInputError, match=r"\(3, 5\)"):
        ppkt_loss(_unit(10, 4, seed=0), _unit(3, 5, seed=1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(LossInputError, match="superpixels"):
        slidr_loss(
            b["points"], b["images"], b["pairing_points"], b["pairing_images"], b["superpixels"][:, :3]
        )
    with pytest.raises(LossInputError, match=r"pairing_points indexes"):
        slidr_loss(b["points"], b["images"], b["pairing_points"] + 100, b["pairing_images"], b["superpixels"])
    q, k, alpha = _st_inputs()
    with pytest.raises(ValueError, match=r"alpha must be \(M, M\) = \(24, 24\)"):
        semantically_tolerant_loss(q, k, alpha[:5])
    with pytest.raises(LossInputError, match="k_fraction"):
        TolerantOptions(k_fraction=1.5)
