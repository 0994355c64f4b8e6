"""NCLR pieces: differentiable EPnP (exact, noisy, outliers, gradients vs finite differences), the camera
fit from exact pairs, and every loss term against a slow transcription of its equation."""

from __future__ import annotations

import math

import pytest
import torch

from lidar_ssl_core.errors import LossInputError
from lidar_ssl_core.losses.epnp import Pose, camera_from_correspondences, epnp, normalise_pixels
from lidar_ssl_core.losses.nclr import lta_infonce, overlap_loss, pose_loss, soft_match, symmetric

D = torch.float64


def _scene(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points, their normalised projections, and the true (R, t)."""
    g = torch.Generator().manual_seed(seed)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=D))[0]
    if torch.linalg.det(rot) < 0:
        rot = -rot
    t = torch.tensor([0.5, -0.3, 8.0], dtype=D)
    world = torch.randn(n, 3, generator=g, dtype=D) * 2.0
    cam = world @ rot.T + t
    return world, cam[:, :2] / cam[:, 2:], rot, t


def _errors(pose: Pose, rot: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """Rotation error in degrees and translation error in the world's units."""
    cos = ((rot.T @ pose.rotation).trace() - 1.0) / 2.0
    return math.degrees(math.acos(float(cos.clamp(-1.0, 1.0)))), float((pose.translation - t).norm())


def test_epnp_recovers_the_pose_from_exact_correspondences() -> None:
    world, image, rot, t = _scene()
    pose = epnp(world, image)
    assert float((pose.rotation - rot).abs().max()) < 1e-9
    assert float((pose.translation - t).abs().max()) < 1e-9
    assert abs(float(torch.linalg.det(pose.rotation)) - 1.0) < 1e-12
    with pytest.raises(LossInputError, match="at least 6"):
        epnp(world[:5], image[:5])


def test_epnp_degrades_gracefully_with_noise_and_outliers() -> None:
    world, image, rot, t = _scene()
    g = torch.Generator().manual_seed(1)
    previous = 0.0
    for sigma in (1e-3, 1e-2, 3e-2):  # ~0.3, 3 and 9 px at a 300 px focal length
        rot_err, t_err = _errors(
            epnp(world, image + sigma * torch.randn(image.shape, generator=g, dtype=D)), rot, t
        )
        assert rot_err < 300 * sigma and t_err < 10 * sigma * 8.0, (sigma, rot_err, t_err)
        previous = max(previous, rot_err)
    assert previous > 0.0
    for fraction in (0.05, 0.1):  # grossly wrong 2D points (~90 px): the pose is off, not lost
        bad = image.clone()
        n = int(fraction * image.shape[0])
        bad[:n] += 0.3 * torch.randn(n, 2, generator=g, dtype=D)
        rot_err, t_err = _errors(epnp(world, bad), rot, t)
        assert rot_err < 15.0 and t_err < 1.0, (fraction, rot_err, t_err)


def test_epnp_gradients_match_finite_differences() -> None:
    world, image, _, _ = _scene(n=8, seed=2)
    g = torch.Generator().manual_seed(3)
    world = world.clone().requires_grad_(True)
    image = (image + 1e-3 * torch.randn(image.shape, generator=g, dtype=D)).requires_grad_(True)

    def flat(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        pose = epnp(w, x)
        return torch.cat([pose.rotation.flatten(), pose.translation])

    assert torch.autograd.gradcheck(flat, (world, image), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_camera_fit_recovers_intrinsics_and_pose_also_of_a_mirrored_image() -> None:
    world, _, rot, t = _scene()
    k = torch.tensor([[300.0, 0.0, 160.0], [0.0, 310.0, 90.0], [0.0, 0.0, 1.0]], dtype=D)
    proj = (world @ rot.T + t) @ k.T
    pixels = proj[:, :2] / proj[:, 2:]
    cam = camera_from_correspondences(world, pixels)
    assert cam.rms < 1e-8
    assert float((cam.intrinsics - k).abs().max()) < 1e-6 and float((cam.rotation - rot).abs().max()) < 1e-9
    mirrored = pixels.clone()
    mirrored[:, 0] = 320.0 - mirrored[:, 0]  # a horizontal flip of the image
    cam = camera_from_correspondences(world, mirrored)
    assert cam.rms < 1e-8 and float(cam.intrinsics[0, 0]) < 0  # the mirror lives in K
    assert abs(float(torch.linalg.det(cam.rotation)) - 1.0) < 1e-9
    cam_points = world @ cam.rotation.T + cam.translation
    assert (
        float(
            (normalise_pixels(mirrored, cam.intrinsics) - cam_points[:, :2] / cam_points[:, 2:]).abs().max()
        )
        < 1e-9
    )


# --- loss terms against slow transcriptions ------------------------------------------------------------


def _lta_slow(
    q: torch.Tensor,
    k: torch.Tensor,
    px: torch.Tensor,
    img: torch.Tensor,
    w: torch.Tensor,
    tau: float,
    rp: float,
    rn: float,
) -> torch.Tensor:
    s = len(q)

    def f(i: int, j: int) -> torch.Tensor:
        return torch.exp(q[i] @ w @ k[j] / tau)

    def side(anchor_is_point: bool) -> torch.Tensor:
        total = q.new_zeros(())
        for i in range(s):
            num = q.new_zeros(())
            den = q.new_zeros(())
            for j in range(s):
                same = bool(img[i] == img[j])
                d = float(torch.dist(px[i], px[j]))
                value = f(i, j) if anchor_is_point else f(j, i)
                if same and d <= rp:
                    num = num + value
                    den = den + value
                elif not same or d > rn:
                    den = den + value
            total = total - torch.log(num / den)
        return total / s

    return side(True) + side(False)


def test_lta_infonce_matches_its_equation_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(4)
    s, c = 10, 5
    q = torch.nn.functional.normalize(torch.randn(s, c, generator=g, dtype=D), dim=1).requires_grad_(True)
    k = torch.nn.functional.normalize(torch.randn(s, c, generator=g, dtype=D), dim=1).requires_grad_(True)
    a = torch.randn(c, c, generator=g, dtype=D).requires_grad_(True)
    px = torch.tensor(
        [[0, 0], [0, 1], [5, 5], [9, 9], [0, 3], [20, 20], [1, 1], [2, 0], [30, 2], [3, 3]], dtype=D
    )
    img = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    fast = lta_infonce(q, k, px, img, symmetric(a), temperature=0.5, r_p=1.5, r_n=4.0)
    grads = torch.autograd.grad(fast, (q, k, a))
    slow = _lta_slow(q, k, px, img, symmetric(a), 0.5, 1.5, 4.0)
    slow_grads = torch.autograd.grad(slow, (q, k, a))
    torch.testing.assert_close(fast, slow)
    for got, want in zip(grads, slow_grads, strict=True):
        torch.testing.assert_close(got, want)
    w = symmetric(a)
    assert torch.equal(w, w.T)
    with pytest.raises(LossInputError, match="r_n"):
        lta_infonce(q, k, px, img, w, r_p=5.0, r_n=1.0)


def test_overlap_soft_match_and_pose_losses_match_their_equations() -> None:
    g = torch.Generator().manual_seed(5)
    pl = torch.randn(7, generator=g, dtype=D).requires_grad_(True)
    il = torch.randn(9, generator=g, dtype=D).requires_grad_(True)
    pt = (torch.rand(7, generator=g) > 0.5).to(D)
    it = (torch.rand(9, generator=g) > 0.5).to(D)
    fast = overlap_loss(pl, pt, il, it)

    def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(logits)
        return -torch.stack(
            [yy * torch.log(ss) + (1 - yy) * torch.log(1 - ss) for ss, yy in zip(s, y, strict=True)]
        ).sum() / len(y)

    slow = bce(pl, pt) + bce(il, it)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(torch.autograd.grad(fast, (pl, il)), torch.autograd.grad(slow, (pl, il)), strict=True):
        torch.testing.assert_close(a, b)

    qf = torch.randn(4, 3, generator=g, dtype=D).requires_grad_(True)
    kf = torch.randn(6, 3, generator=g, dtype=D).requires_grad_(True)
    coords = torch.rand(6, 2, generator=g, dtype=D) * 100
    w = symmetric(torch.randn(3, 3, generator=g, dtype=D))
    fast_m = soft_match(qf, kf, coords, w)
    slow_m = torch.stack(
        [
            torch.stack([torch.exp(qf[i] @ w @ kf[j]) * coords[j] for j in range(6)]).sum(0)
            / torch.stack([torch.exp(qf[i] @ w @ kf[j]) for j in range(6)]).sum()
            for i in range(4)
        ]
    )
    torch.testing.assert_close(fast_m, slow_m)
    gm = torch.randn(4, 2, generator=g, dtype=D)
    for a, b in zip(
        torch.autograd.grad((fast_m * gm).sum(), (qf, kf)),
        torch.autograd.grad((slow_m * gm).sum(), (qf, kf)),
        strict=True,
    ):
        torch.testing.assert_close(a, b)

    _, _, rot_gt, t_gt = _scene()
    rot = (rot_gt + 0.3 * torch.randn(3, 3, generator=g, dtype=D)).requires_grad_(True)
    t = (t_gt + torch.tensor([2.0, -0.2, 0.5], dtype=D)).requires_grad_(True)
    fast_p = pose_loss(rot, t, rot_gt, t_gt, delta=1.0)

    def huber(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x**2 if abs(float(x.detach())) <= 1.0 else x.abs() - 0.5

    err = rot_gt.T @ rot - torch.eye(3, dtype=D)
    slow_p = (
        torch.stack([huber(e) for e in err.flatten()]).sum() / 9
        + torch.stack([huber(e) for e in (t_gt - t)]).sum() / 3
    )
    torch.testing.assert_close(fast_p, slow_p)
    for a, b in zip(
        torch.autograd.grad(fast_p, (rot, t)), torch.autograd.grad(slow_p, (rot, t)), strict=True
    ):
        torch.testing.assert_close(a, b)
