"""ScaLR-style feature distillation: the loss against a slow per-pair transcription (float64), camera and
point sampling, and ``--method scalr`` training on a tiny synthetic bag with a random DINOv2 teacher."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_dinov2 import reference, to_official
from test_pretrain import _build, bag  # noqa: F401  (module fixture)

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.losses.scalr import ScalrLossOptions, scalr_details, scalr_loss
from lidar_ssl_core.train.methods.scalr import sample_per_group

D = torch.float64


def slow_sample(fmap: torch.Tensor, row: int, col: int, h: int, w: int, align_corners: bool) -> torch.Tensor:
    """Bilinear value of (C, th, tw) at image pixel (row, col) of an (h, w) image, edges clamped."""
    _, th, tw = fmap.shape
    if align_corners:
        px, py = col * (tw - 1) / (w - 1), row * (th - 1) / (h - 1)
    else:
        px, py = (col + 0.5) * tw / w - 0.5, (row + 0.5) * th / h - 0.5
    px, py = min(max(px, 0.0), tw - 1.0), min(max(py, 0.0), th - 1.0)
    x0, y0 = math.floor(px), math.floor(py)
    out = fmap.new_zeros(fmap.shape[0])
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        weight = (1 - abs(px - xx)) * (1 - abs(py - yy))
        if xx < tw and yy < th and weight > 0:
            out = out + weight * fmap[:, yy, xx]
    return out


def slow_scalr(
    points: torch.Tensor,
    teacher: torch.Tensor,
    pairing_points: torch.Tensor,
    pairing_images: torch.Tensor,
    h: int,
    w: int,
    cos_w: float,
    l2_w: float,
    level: str,
    align_corners: bool,
) -> torch.Tensor:
    targets: dict[int, list[torch.Tensor]] = {}
    terms = []
    for p in range(len(pairing_points)):
        i, r, c = (int(v) for v in pairing_images[p])
        t = slow_sample(teacher[i], r, c, h, w, align_corners)
        if float(t.abs().sum()) == 0.0:
            continue
        t = t / t.norm()
        if level == "voxel":
            targets.setdefault(int(pairing_points[p]), []).append(t)
            continue
        terms.append((int(pairing_points[p]), t))
    if level == "voxel":
        terms = [(v, sum(ts) / len(ts)) for v, ts in sorted(targets.items())]
    total = points.new_zeros(())
    for v, t in terms:
        s = points[v] / points[v].norm()
        t = t / t.norm()
        total = total + cos_w * (1 - s @ t) + l2_w * torch.sqrt(((s - t) ** 2).sum())
    return total / len(terms)


def _inputs(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    h, w = 28, 42
    pix = torch.stack(
        [
            torch.randint(0, 3, (60,), generator=g),
            torch.randint(0, h, (60,), generator=g),
            torch.randint(0, w, (60,), generator=g),
        ],
        1,
    )
    teacher = torch.randn(3, 8, 2, 3, generator=g, dtype=D)
    teacher[2] = 0.0  # the third image has no teacher feature: its pairs are dropped
    return {
        "points": torch.randn(25, 8, generator=g, dtype=D).requires_grad_(),
        "teacher": teacher,
        "pairing_points": torch.randint(0, 25, (60,), generator=g),
        "pairing_images": pix,
        "size": (h, w),
    }


@pytest.mark.parametrize(
    ("cos_w", "l2_w", "level", "align"),
    [(1.0, 0.0, "pair", False), (0.0, 1.0, "pair", True), (0.5, 2.0, "voxel", False)],
)
def test_loss_matches_slow_transcription(cos_w: float, l2_w: float, level: Any, align: bool) -> None:
    b = _inputs()
    opts = ScalrLossOptions(cosine_weight=cos_w, l2_weight=l2_w, level=level, align_corners=align)
    args = (b["points"], b["teacher"], b["pairing_points"], b["pairing_images"])
    fast = scalr_loss(*args, image_size=b["size"], options=opts)
    h, w = b["size"]
    slow = slow_scalr(*args, h, w, cos_w, l2_w, level, align)
    assert float(fast.detach()) == pytest.approx(float(slow.detach()), rel=1e-10)
    g_fast = torch.autograd.grad(fast, b["points"])[0]
    g_slow = torch.autograd.grad(slow, b["points"])[0]
    torch.testing.assert_close(g_fast, g_slow)
    d = scalr_details(*args, image_size=b["size"], options=opts)
    on_third = b["pairing_images"][:, 0] == 2
    assert d.dropped.tolist() == torch.nonzero(on_third).squeeze(1).tolist()
    if level == "pair":
        assert d.anchors.tolist() == torch.nonzero(~on_third).squeeze(1).tolist()
    else:
        assert d.anchors.tolist() == sorted(set(b["pairing_points"][~on_third].tolist()))


def test_loss_is_zero_when_students_equal_their_targets_and_errors() -> None:
    b = _inputs(1)
    t = b["teacher"][:2]
    pix = b["pairing_images"][b["pairing_images"][:, 0] < 2]
    targets = F.interpolate(t, size=b["size"], mode="bilinear", align_corners=False)[
        pix[:, 0], :, pix[:, 1], pix[:, 2]
    ]
    loss = scalr_loss(targets * 3.0, t, torch.arange(len(pix)), pix, image_size=b["size"])
    assert float(loss) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(LossInputError, match=r"got \(2, 8, 2, 3\)"):
        scalr_loss(targets[:, :4], t, torch.arange(len(pix)), pix, image_size=b["size"])
    with pytest.raises(LossInputError, match="not both 0"):
        ScalrLossOptions(cosine_weight=0.0)


def test_camera_and_point_sampling_stay_within_each_sample() -> None:
    image_batch = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    gen = torch.Generator().manual_seed(0)
    cams = sample_per_group(image_batch, 1, gen)
    assert image_batch[cams].tolist() == [0, 1, 2]
    assert sample_per_group(image_batch, None, gen).tolist() == list(range(7))
    pair_sample = torch.tensor([0] * 10 + [1] * 3)
    kept = sample_per_group(pair_sample, 4, gen)
    assert pair_sample[kept].tolist() == [0] * 4 + [1] * 3 and torch.unique(kept).numel() == 7


def test_method_scalr_trains_student_and_head_with_a_frozen_dinov2(
    bag: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    ref = reference(4, False, seed=7)
    weights = tmp_path / "dinov2_tiny_reg4.pth"
    torch.save(to_official(ref.state_dict()), weights)
    trainer = _build(
        bag,
        tmp_path / "run",
        batch_size=2,
        method="scalr",
        teacher={"arch": "dinov2", "weights": str(weights)},
        scalr={"cameras_per_sample": 1, "points_per_sample": 200, "lr": 1e-2},
        schedule="constant",  # scalr's default warm-up starts at lr 0 (tests/test_pretrain_schedule.py)
    )
    method: Any = trainer.method
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert method.head.weight.shape[0] == 128  # backbone out_dim -> the teacher width
    frozen = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    batch = next(iter(trainer.loader))
    losses = [trainer.train_step(batch) for _ in range(3)]
    assert all(0.0 <= v <= 2.0 for v in losses) and losses[-1] < losses[0], losses
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert not any(k.startswith("teacher.") for k in method.checkpoint_state())
    assert any(k.startswith("head.") for k in method.checkpoint_state())


def test_scalr_loss_is_exported_beside_the_other_losses() -> None:
    import lidar_ssl_core.losses as losses
    from lidar_ssl_core.losses import scalr as module

    assert losses.scalr_loss is module.scalr_loss and losses.ScalrLossOptions is module.ScalrLossOptions
    assert "scalr_loss" in losses.__all__ and "scalr_details" in losses.__all__
