"""project_to_image / project_cloud on synthetic points, and the distortion models against OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lidar_ssl_core.errors import CalibrationError
from lidar_ssl_core.geometry.projection import project_cloud, project_to_image
from lidar_ssl_core.geometry.transforms import make_transform
from lidar_ssl_core.types import CameraIntrinsics

K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
PINHOLE = CameraIntrinsics(K=K, width=640, height=480, frame_id="cam")


def _pixels_for(u: float, v: float, z: float = 10.0) -> np.ndarray:
    """Camera-frame point that projects to (u, v) with PINHOLE."""
    return np.array([(u - 320.0) * z / 500.0, (v - 240.0) * z / 500.0, z])


def test_pinhole_values_and_rounding() -> None:
    pts = np.stack([_pixels_for(100.4, 200.6), _pixels_for(320.0, 240.0, 2.0), _pixels_for(10.5, 3.5)])
    proj = project_to_image(pts, PINHOLE)
    assert proj.point_index.tolist() == [0, 1, 2]
    np.testing.assert_allclose(proj.uv, [[100.4, 200.6], [320.0, 240.0], [10.5, 3.5]], atol=1e-9)
    # (row, col); numpy rounds halves to even
    assert proj.pixel.tolist() == [[201, 100], [240, 320], [4, 10]]
    np.testing.assert_allclose(proj.depth, [10.0, 2.0, 10.0])
    assert proj.point_index.dtype == np.int64 and proj.pixel.dtype == np.int64


def test_in_image_bounds_are_the_devkit_ones() -> None:
    # strict 1 < u < W-1 and 1 < v < H-1
    us = [1.0, 1.001, 638.999, 639.0, 320.0, 320.0, 320.0, 320.0]
    vs = [240.0, 240.0, 240.0, 240.0, 1.0, 1.001, 478.999, 479.0]
    pts = np.stack([_pixels_for(u, v) for u, v in zip(us, vs, strict=True)])
    proj = project_to_image(pts, PINHOLE)
    assert proj.point_index.tolist() == [1, 2, 5, 6]
    assert proj.pixel.tolist() == [[240, 1], [240, 639], [1, 320], [479, 320]]
    assert proj.pixel[:, 0].max() <= 479 and proj.pixel[:, 1].max() <= 639


def test_min_depth_and_points_behind() -> None:
    pts = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0001], [0.0, 0.0, -5.0], [0.0, 0.0, 0.5]])
    assert project_to_image(pts, PINHOLE, min_depth=1.0).point_index.tolist() == [1]
    assert project_to_image(pts, PINHOLE, min_depth=0.0).point_index.tolist() == [0, 1, 3]
    empty = project_to_image(np.zeros((0, 3)), PINHOLE)
    assert len(empty) == 0 and empty.uv.shape == (0, 2) and empty.pixel.shape == (0, 2)


def test_projection_matrix_with_baseline_is_used() -> None:
    P = np.hstack([K, np.array([[45.0], [-0.3], [0.005]])])
    intr = CameraIntrinsics(K=K, width=640, height=480, P=P)
    pt = np.array([[1.0, 0.5, 8.0]])
    uvw = P @ np.array([1.0, 0.5, 8.0, 1.0])
    np.testing.assert_allclose(project_to_image(pt, intr).uv[0], uvw[:2] / uvw[2], atol=1e-12)


def test_project_cloud_applies_extrinsic() -> None:
    # lidar x forward, y left, z up -> optical frame
    R = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    T = make_transform(R, [0.0, 0.0, 0.0])
    xyz = np.array([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0], [10.0, 2.0, 1.0]], dtype=np.float32)
    proj = project_cloud(xyz, T, PINHOLE)
    assert proj.point_index.tolist() == [0, 2]
    np.testing.assert_allclose(proj.uv[1], [320.0 - 100.0, 240.0 - 50.0])
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        project_cloud(np.zeros((4, 4)), T, PINHOLE)


def _random_points(n: int, seed: int, half_fov: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.uniform(1.5, 40.0, n)
    x = rng.uniform(-half_fov, half_fov, n) * z
    y = rng.uniform(-half_fov, half_fov, n) * z
    return np.stack([x, y, z], axis=1)


@pytest.mark.parametrize(
    ("model", "D"),
    [
        ("plumb_bob", [-0.28, 0.07, 0.0005, -0.0003, 0.0]),
        ("plumb_bob", [0.05, -0.01, 0.001, 0.002, 0.001]),
        ("rational_polynomial", [0.3, -0.05, 0.0005, -0.0004, 0.001, 0.7, -0.02, 0.004]),
    ],
)
def test_distortion_matches_opencv(model: str, D: list[float]) -> None:
    Ks = np.array([[800.0, 0.0, 640.0], [0.0, 805.0, 360.0], [0.0, 0.0, 1.0]])
    intr = CameraIntrinsics(K=Ks, width=1280, height=720, D=np.array(D), distortion_model=model)
    pts = _random_points(5000, 1, 0.7)
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), Ks, np.array(D))
    ref = ref.reshape(-1, 2)
    proj = project_to_image(pts, intr)
    inside = (ref[:, 0] > 1) & (ref[:, 0] < 1279) & (ref[:, 1] > 1) & (ref[:, 1] < 719)
    np.testing.assert_array_equal(proj.point_index, np.nonzero(inside)[0])
    np.testing.assert_allclose(proj.uv, ref[inside], atol=1e-6)
    assert len(proj) > 1000


def test_equidistant_matches_opencv_fisheye() -> None:
    D = np.array([0.02, -0.005, 0.001, -0.0002])
    Ks = np.array([[300.0, 0.0, 640.0], [0.0, 300.0, 400.0], [0.0, 0.0, 1.0]])
    intr = CameraIntrinsics(K=Ks, width=1280, height=800, D=D, distortion_model="equidistant")
    pts = _random_points(5000, 2, 3.0)
    ref, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), Ks, D)
    ref = ref.reshape(-1, 2)
    proj = project_to_image(pts, intr)
    inside = (ref[:, 0] > 1) & (ref[:, 0] < 1279) & (ref[:, 1] > 1) & (ref[:, 1] < 799)
    np.testing.assert_array_equal(proj.point_index, np.nonzero(inside)[0])
    np.testing.assert_allclose(proj.uv, ref[inside], atol=1e-6)


def test_distortion_fold_back_is_rejected() -> None:
    # Strong barrel distortion: r_d(r) = r (1 - 0.4 r^2) peaks at r = 0.913 and then folds back.
    intr = CameraIntrinsics(
        K=K, width=640, height=480, D=np.array([-0.4, 0.0, 0.0, 0.0, 0.0]), distortion_model="plumb_bob"
    )
    far = np.array([[1.6, 0.0, 2.0]])  # x/z = 0.8 -> kept
    folded = np.array([[2.0 * 1.5, 0.0, 1.5]])  # x/z = 2.0: r_d = 2 (1 - 1.6) = -1.2 would land in the image
    proj = project_to_image(np.vstack([far, folded]), intr)
    assert proj.point_index.tolist() == [0]
    np.testing.assert_allclose(proj.uv[0, 0], 320.0 + 500.0 * 0.8 * (1 - 0.4 * 0.64))


def test_rectified_distortion_free_uses_p_not_k() -> None:
    P = np.array([[400.0, 0.0, 300.0, 0.0], [0.0, 400.0, 200.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    zero_d = CameraIntrinsics(K=K, width=640, height=480, D=np.zeros(5), P=P)
    distorted = CameraIntrinsics(K=K, width=640, height=480, D=np.array([1e-9, 0, 0, 0, 0]), P=P)
    pt = np.array([[1.0, 1.0, 10.0]])
    np.testing.assert_allclose(project_to_image(pt, zero_d).uv[0], [340.0, 240.0])
    np.testing.assert_allclose(project_to_image(pt, distorted).uv[0], [370.0, 290.0], atol=1e-6)


def test_unsupported_model_and_bad_coefficients() -> None:
    bad = CameraIntrinsics(K=K, width=640, height=480, D=np.array([0.1, 0.0]), distortion_model="kannala")
    with pytest.raises(CalibrationError, match="'kannala' not supported"):
        project_to_image(np.array([[0.0, 0.0, 5.0]]), bad)
    extra = CameraIntrinsics(
        K=K, width=640, height=480, D=np.array([0.1, 0, 0, 0, 0, 0.3]), distortion_model="plumb_bob"
    )
    with pytest.raises(CalibrationError, match="takes 5 coefficients"):
        project_to_image(np.array([[0.0, 0.0, 5.0]]), extra)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        project_to_image(np.zeros(3), PINHOLE)
