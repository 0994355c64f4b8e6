"""Differentiable EPnP (Lepetit, Moreno-Noguer, Fua 2009) and camera recovery from exact correspondences.

:func:`epnp` solves ``min_{R,t} sum_i || pi(R X_i + t) - x_i ||`` for a calibrated camera, ``x_i`` being
normalised image coordinates (``K^-1 [u, v, 1]``). Every step is a torch operation with a gradient:

1. four control points: the centroid and the centroid plus the principal axes of the 3D points (scaled
   by the axes' standard deviations), and each point's barycentric coordinates ``alpha`` (n, 4);
2. the (2n, 12) system ``M`` of the projection equations in the camera-frame control points; its kernel
   is spanned by the eigenvectors of ``M^T M`` with the smallest eigenvalues (``torch.linalg.eigh``);
3. for N = 1, 2, 3 kernel vectors, the weights ``beta`` that keep the control points' pairwise distances
   (linearised least squares over the products ``beta_a beta_b``), refined by a few Gauss-Newton steps;
4. camera-frame points from the control points, and ``R, t`` by orthogonal Procrustes (SVD, det fixed);
5. the candidate with the smallest reprojection error is returned (the choice itself is not differentiated).

Gradients reach ``X`` and ``x`` through ``eigh``, the least squares and the SVD; they are finite as long as
the problem is not degenerate (distinct eigenvalues, n >= 6 points not all coplanar or on a line).

:func:`camera_from_correspondences` recovers ``K``, ``R``, ``t`` of a pinhole camera (possibly mirrored, as
after a horizontal image flip) from exact 3D-2D pairs by the normalised DLT and an RQ decomposition; NCLR
uses it to know the ground-truth pose after the data augmentations without carrying the calibration.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lidar_ssl_core.errors import LossInputError

#: Gauss-Newton steps on beta (EPnP section 3.4); the paper uses "a few"
GAUSS_NEWTON_STEPS = 5
_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_PAIR_INDEX = (torch.tensor([p[0] for p in _PAIRS]), torch.tensor([p[1] for p in _PAIRS]))


class Pose(NamedTuple):
    """Rotation (..., 3, 3) and translation (..., 3) mapping world points to the camera frame."""

    rotation: torch.Tensor
    translation: torch.Tensor


class Camera(NamedTuple):
    """A pinhole camera ``x ~ K (R X + t)``; ``rms`` is the reprojection error of the fit in pixels."""

    intrinsics: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    rms: float


def _check(points3d: torch.Tensor, points2d: torch.Tensor) -> None:
    if points3d.ndim != 2 or points3d.shape[1] != 3 or points2d.shape != (points3d.shape[0], 2):
        raise LossInputError(
            f"EPnP needs points3d (n, 3) and points2d (n, 2), got {tuple(points3d.shape)} and "
            f"{tuple(points2d.shape)}"
        )
    if points3d.shape[0] < 6:
        raise LossInputError(f"EPnP needs at least 6 correspondences, got {points3d.shape[0]}")


def control_points(points3d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World control points (4, 3) (centroid + principal axes) and barycentric coordinates (n, 4)."""
    centroid = points3d.mean(0)
    centred = points3d - centroid
    cov = centred.T @ centred / points3d.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    axes = evecs * evals.clamp_min(1e-12).sqrt()  # columns: scaled principal directions
    ctrl = torch.cat([centroid[None], centroid[None] + axes.T])
    alphas_123 = torch.linalg.solve(axes, centred.T).T  # centred = alphas_123 @ axes.T
    alphas = torch.cat([1.0 - alphas_123.sum(1, keepdim=True), alphas_123], 1)
    return ctrl, alphas


def _system(alphas: torch.Tensor, points2d: torch.Tensor) -> torch.Tensor:
    """(2n, 12) rows ``[a_j, 0, -a_j u]`` and ``[0, a_j, -a_j v]`` over the four control points j."""
    n = alphas.shape[0]
    u, v = points2d[:, 0:1], points2d[:, 1:2]
    zeros = torch.zeros_like(alphas)
    row_u = torch.stack([alphas, zeros, -alphas * u], 2).reshape(n, 12)
    row_v = torch.stack([zeros, alphas, -alphas * v], 2).reshape(n, 12)
    return torch.cat([row_u, row_v])


def _pair_differences(points: torch.Tensor) -> torch.Tensor:
    """(..., 6, 3) differences of the six control-point pairs of (..., 4, 3) control points."""
    i, j = (index.to(points.device) for index in _PAIR_INDEX)
    return points[..., i, :] - points[..., j, :]


def _distance_system(kernel: torch.Tensor) -> torch.Tensor:
    """(6, P) coefficients of the products ``beta_a beta_b`` (a <= b) in the six squared control-point
    distances, for kernel vectors (N, 4, 3)."""
    n = kernel.shape[0]
    diff = _pair_differences(kernel)  # (N, 6, 3)
    gram = torch.einsum("apk,bpk->pab", diff, diff)  # (6, N, N)
    a, b = torch.triu_indices(n, n, device=kernel.device)
    factor = torch.where(a == b, 1.0, 2.0).to(kernel.dtype)
    return gram[:, a, b] * factor


def _betas(kernel: torch.Tensor, dist2: torch.Tensor) -> torch.Tensor:
    """Initial beta (N,) from the linearised distance constraints, then Gauss-Newton refinement."""
    n = kernel.shape[0]
    system = _distance_system(kernel)
    products = torch.linalg.lstsq(system, dist2[:, None]).solution[:, 0]
    # products are ordered (0,0), (0,1), ..., (0,N-1), (1,1), ...: read beta_0^2 and beta_0 beta_b
    beta0 = products[0].abs().clamp_min(1e-18).sqrt()
    beta = torch.cat([beta0[None], products[1:n] / beta0])
    diff_kernel = _pair_differences(kernel)  # (N, 6, 3)
    for _ in range(GAUSS_NEWTON_STEPS):
        diff = _pair_differences((beta[:, None, None] * kernel).sum(0))  # (6, 3)
        residual = (diff**2).sum(1) - dist2
        jac = 2.0 * torch.einsum("pk,npk->pn", diff, diff_kernel)  # (6, N)
        beta = beta + torch.linalg.lstsq(jac, -residual[:, None]).solution[:, 0]
    return beta


def procrustes(world: torch.Tensor, camera: torch.Tensor) -> Pose:
    """R, t minimising ``sum ||R world_i + t - camera_i||^2`` with det R = +1 (Kabsch / Umeyama, no scale)."""
    cw, cc = world.mean(0), camera.mean(0)
    h = (camera - cc).T @ (world - cw)
    u, _, vh = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d]))
    rotation = u @ fix @ vh
    return Pose(rotation, cc - rotation @ cw)


def reprojection_error(pose: Pose, points3d: torch.Tensor, points2d: torch.Tensor) -> torch.Tensor:
    """Mean distance between ``points2d`` and the projections of ``points3d`` (normalised coordinates)."""
    cam = points3d @ pose.rotation.T + pose.translation
    proj = cam[:, :2] / cam[:, 2:3].clamp_min(1e-9)
    err: torch.Tensor = (proj - points2d).norm(dim=1).mean()
    return err


def epnp(
    points3d: torch.Tensor,
    points2d: torch.Tensor,
    *,
    kernel_dims: tuple[int, ...] = (1, 2, 3),
) -> Pose:
    """Pose of a calibrated camera from n >= 6 correspondences (module docstring).

    Args:
        points3d: (n, 3) world points.
        points2d: (n, 2) normalised image coordinates (``K^-1`` applied), of the same points.
        kernel_dims: the N of the candidate solutions; the one with the lowest reprojection error wins.
    """
    _check(points3d, points2d)
    ctrl_w, alphas = control_points(points3d)
    m = _system(alphas, points2d)
    _, evecs = torch.linalg.eigh(m.T @ m)
    dist2 = (_pair_differences(ctrl_w) ** 2).sum(1)
    best: Pose | None = None
    best_err = None
    for n in kernel_dims:
        kernel = evecs[:, :n].T.reshape(n, 4, 3)
        beta = _betas(kernel, dist2)
        ctrl_c = (beta[:, None, None] * kernel).sum(0)
        cam_points = alphas @ ctrl_c
        if cam_points[:, 2].mean() < 0:  # the kernel's sign is arbitrary: points must be in front
            cam_points = -cam_points
        pose = procrustes(points3d, cam_points)
        err = float(reprojection_error(pose, points3d, points2d).detach())
        if best_err is None or err < best_err:
            best, best_err = pose, err
    assert best is not None
    return best


def normalise_pixels(pixels: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """(n, 2) pixel coordinates (u, v) -> normalised coordinates ``K^-1 [u, v, 1]`` (first two)."""
    homog = torch.cat([pixels, torch.ones_like(pixels[:, :1])], 1)
    out = torch.linalg.solve(intrinsics, homog.T).T
    normalised: torch.Tensor = out[:, :2] / out[:, 2:3]
    return normalised


def camera_from_correspondences(points3d: torch.Tensor, pixels: torch.Tensor) -> Camera:
    """K, R, t of the pinhole camera that maps ``points3d`` (n, 3) to ``pixels`` (n, 2) (u, v), n >= 6.

    Normalised DLT (Hartley): the 3x4 projection P from the homogeneous system, then ``P[:, :3] = K R``
    by RQ decomposition with a positive diagonal of K. A mirrored image (horizontal flip, or a reflection
    of the points) shows as det(R) = -1; it is folded into K (negative fx) so that R is a rotation.
    Computed in float64, without gradient (a ground truth, not a prediction).
    """
    if points3d.shape[0] < 6:
        raise LossInputError(f"the camera fit needs at least 6 correspondences, got {points3d.shape[0]}")
    with torch.no_grad():
        x = points3d.double()
        u = pixels.double()
        mx, sx = x.mean(0), (x - x.mean(0)).norm(dim=1).mean() / (3.0**0.5)
        mu, su = u.mean(0), (u - u.mean(0)).norm(dim=1).mean() / (2.0**0.5)
        xn = (x - mx) / sx
        un = (u - mu) / su
        n = x.shape[0]
        xh = torch.cat([xn, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
        zeros = torch.zeros_like(xh)
        rows_u = torch.cat([xh, zeros, -un[:, :1] * xh], 1)
        rows_v = torch.cat([zeros, xh, -un[:, 1:] * xh], 1)
        _, _, vh = torch.linalg.svd(torch.cat([rows_u, rows_v]), full_matrices=False)
        pn = vh[-1].reshape(3, 4)
        t_u = torch.tensor(
            [[1 / su, 0, -mu[0] / su], [0, 1 / su, -mu[1] / su], [0, 0, 1]], dtype=x.dtype, device=x.device
        )
        t_x = torch.eye(4, dtype=x.dtype, device=x.device)
        t_x[:3, :3] /= sx
        t_x[:3, 3] = -mx / sx
        p = torch.linalg.solve(t_u, pn) @ t_x
        if (torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1) @ p[2]).mean() < 0:
            p = -p  # P is defined up to sign: the points must be in front of the camera
        k, r = _rq(p[:, :3])
        scale = k[2, 2]
        k = k / scale
        t = torch.linalg.solve(k, p[:, 3] / scale)
        if torch.linalg.det(r) < 0:  # a mirror: R -> diag(-1, 1, 1) R is a rotation, K takes the flip
            flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=x.dtype, device=x.device))
            r, k, t = flip @ r, k @ flip, flip @ t
        cam = x @ r.T + t
        proj = cam @ k.T
        rms = float(((proj[:, :2] / proj[:, 2:3] - u) ** 2).sum(1).mean().sqrt())
    return Camera(k, r, t, rms)


def _rq(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RQ decomposition ``a = K R`` with K upper triangular with a positive diagonal, R orthogonal."""
    flip = torch.flip(torch.eye(3, dtype=a.dtype, device=a.device), [0])
    q, r = torch.linalg.qr((flip @ a).T)
    k = flip @ r.T @ flip
    rot = flip @ q.T
    signs = torch.diag(torch.sign(torch.diag(k)))
    return k @ signs, signs @ rot
