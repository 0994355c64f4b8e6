"""Voxelisation: hand-computed cells (both modes), grouping invariants, edge cases, real LiDAR sweeps."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lidar_ssl_core.config import VoxelConfig, VoxelMode
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.voxels import (
    Voxelization,
    cell_coordinates,
    cylindrical_coordinates,
    shift_to_origin,
    voxel_mean,
    voxelize,
)

CART_HALF = VoxelConfig(mode=VoxelMode.CARTESIAN, size=(0.5, 0.5, 0.5))
CYL_HALF = VoxelConfig(mode=VoxelMode.CYLINDRICAL, size=(0.5, 1.0, 0.5))


def _check_invariants(xyz: np.ndarray, config: VoxelConfig, vox: Voxelization) -> None:
    """Every structural promise of ``voxelize``, checked against a brute-force np.unique."""
    n = xyz.shape[0]
    cells = cell_coordinates(xyz, config)
    assert vox.coords.dtype == np.int32 and vox.coords.shape == (vox.num_voxels, 3)
    assert vox.point_to_voxel.dtype == np.int64 and vox.point_to_voxel.shape == (n,)
    assert vox.voxel_to_point.dtype == np.int64 and vox.counts.shape == (vox.num_voxels,)
    # inverse map: every point's voxel holds that point's own cell
    np.testing.assert_array_equal(vox.coords[vox.point_to_voxel], cells)
    # representative = first occurrence
    first = np.full(vox.num_voxels, n, dtype=np.int64)
    np.minimum.at(first, vox.point_to_voxel, np.arange(n))
    np.testing.assert_array_equal(vox.voxel_to_point, first)
    np.testing.assert_array_equal(vox.point_to_voxel[vox.voxel_to_point], np.arange(vox.num_voxels))
    np.testing.assert_array_equal(vox.counts, np.bincount(vox.point_to_voxel, minlength=vox.num_voxels))
    assert vox.counts.sum() == n and (vox.counts > 0).all()
    # same result as np.unique (unique, lexicographically sorted cells)
    uniq, idx, inv, cnt = np.unique(cells, axis=0, return_index=True, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(vox.coords, uniq)
    np.testing.assert_array_equal(vox.voxel_to_point, idx)
    np.testing.assert_array_equal(vox.point_to_voxel, inv.reshape(-1))
    np.testing.assert_array_equal(vox.counts, cnt)


def test_cartesian_cells_hand_computed_with_boundaries_and_negatives() -> None:
    xyz = np.array(
        [
            [0.0, 0.0, 0.0],  # origin -> (0, 0, 0)
            [0.5, 0.0, 0.0],  # exactly on the boundary -> next cell
            [0.4999, 0.2, 0.1],  # just below the boundary
            [-0.0001, 0.0, 0.0],  # just negative -> -1
            [-0.5, -0.5, -0.5],  # exactly on a negative boundary -> -1
            [-0.5001, 1.0, 2.25],  # -> -2, 2, 4
            [0.25, 0.25, 0.25],  # duplicate cell of point 0
        ],
        dtype=np.float32,
    )
    expected = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0], [-1, 0, 0], [-1, -1, -1], [-2, 2, 4], [0, 0, 0]])
    np.testing.assert_array_equal(cell_coordinates(xyz, CART_HALF), expected)
    vox = voxelize(xyz, CART_HALF)
    # sorted lexicographically: (-2,2,4) (-1,-1,-1) (-1,0,0) (0,0,0) (1,0,0)
    np.testing.assert_array_equal(vox.coords, [[-2, 2, 4], [-1, -1, -1], [-1, 0, 0], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(vox.point_to_voxel, [3, 4, 3, 2, 1, 0, 3])
    np.testing.assert_array_equal(vox.voxel_to_point, [5, 4, 3, 0, 1])
    np.testing.assert_array_equal(vox.counts, [1, 1, 1, 3, 1])
    _check_invariants(xyz, CART_HALF, vox)


def test_cartesian_uses_each_axis_size() -> None:
    config = VoxelConfig(mode=VoxelMode.CARTESIAN, size=(1.0, 0.25, 2.0))
    xyz = np.array([[1.5, 1.5, 1.5], [-1.5, -0.3, -4.0]], dtype=np.float32)
    np.testing.assert_array_equal(cell_coordinates(xyz, config), [[1, 6, 0], [-2, -2, -2]])


def test_cylindrical_coordinates_values() -> None:
    xyz = np.array([[3.0, 4.0, -1.0], [0.0, 2.0, 0.5], [0.0, -2.0, 0.0], [-1.0, 0.0, 0.0]])
    cyl = cylindrical_coordinates(xyz)
    np.testing.assert_allclose(cyl[:, 0], [5.0, 2.0, 2.0, 1.0])
    np.testing.assert_allclose(cyl[:, 1], [np.degrees(np.arctan2(4, 3)), 90.0, -90.0, -180.0])
    np.testing.assert_array_equal(cyl[:, 2], [-1.0, 0.5, 0.0, 0.0])
    rng = np.random.default_rng(0)
    phi = cylindrical_coordinates(rng.normal(size=(10_000, 3)))[:, 1]
    assert phi.min() >= -180.0 and phi.max() < 180.0


def test_cylindrical_cells_hand_computed_with_phi_wrap() -> None:
    xyz = np.array(
        [
            [1.0, 0.0, 0.0],  # rho 1 -> 2, phi 0, z 0
            [0.5, 0.0, -0.25],  # rho exactly on a boundary -> 1; z -0.25 -> -1
            [0.0, 1.0, 0.5],  # phi exactly 90 -> 90; z on boundary -> 1
            [0.0, -1.0, 0.0],  # phi exactly -90 -> -90
            [-1.0, 0.0, 0.0],  # phi = +180 exactly -> folded to -180
            [-1.0, -0.0, 0.0],  # phi = -180 (negative zero y) -> -180
            [-1.0, -1e-6, 0.0],  # phi just above -180 -> -180
            [-1.0, 1e-6, 0.0],  # phi just below +180 -> 179
            [0.0, 0.0, 0.0],  # atan2(0, 0) = 0
        ],
        dtype=np.float64,
    )
    expected = np.array(
        [
            [2, 0, 0],
            [1, 0, -1],
            [2, 90, 1],
            [2, -90, 0],
            [2, -180, 0],
            [2, -180, 0],
            [2, -180, 0],
            [2, 179, 0],
            [0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(cell_coordinates(xyz, CYL_HALF), expected)
    vox = voxelize(xyz, CYL_HALF)
    # the three rays at +-180 deg share one voxel; the ray at +179.99 deg is a separate (non-wrapping) bin
    assert vox.point_to_voxel[4] == vox.point_to_voxel[5] == vox.point_to_voxel[6]
    assert vox.point_to_voxel[7] != vox.point_to_voxel[4]
    assert vox.num_voxels == 7
    _check_invariants(xyz, CYL_HALF, vox)


def test_cylindrical_default_grid_has_360_azimuth_bins() -> None:
    angles = np.radians(np.arange(-180.0, 180.0, 0.5) + 0.25)
    xyz = np.stack([10.05 * np.cos(angles), 10.05 * np.sin(angles), np.zeros_like(angles)], axis=1)
    cells = cell_coordinates(xyz, VoxelConfig())
    np.testing.assert_array_equal(np.unique(cells[:, 1]), np.arange(-180, 180))
    assert (cells[:, 0] == 100).all()  # rho 10.05 m / 0.1 m


def test_coarser_azimuth_bins() -> None:
    config = VoxelConfig(mode=VoxelMode.CYLINDRICAL, size=(1.0, 2.0, 1.0))
    xyz = np.array([[-1.0, 1e-6, 0.0], [np.cos(np.radians(3.0)), np.sin(np.radians(3.0)), 0.0]])
    np.testing.assert_array_equal(cell_coordinates(xyz, config)[:, 1], [89, 1])


@pytest.mark.parametrize("mode", [VoxelMode.CYLINDRICAL, VoxelMode.CARTESIAN])
def test_random_clouds_match_brute_force(mode: VoxelMode) -> None:
    config = VoxelConfig(
        mode=mode, size=(0.3, 2.0, 0.2) if mode == VoxelMode.CYLINDRICAL else (0.3, 0.3, 0.2)
    )
    for seed in range(5):
        rng = np.random.default_rng(seed)
        xyz = (rng.normal(size=(3000, 3)) * [8, 8, 1]).astype(np.float32)
        xyz[2000:] = xyz[:1000] + 0.01  # force many shared voxels
        _check_invariants(xyz, config, voxelize(xyz, config))


def test_cells_do_not_depend_on_the_rest_of_the_cloud() -> None:
    """Signed convention: no per-cloud offset, so a point keeps its cell when others are removed."""
    rng = np.random.default_rng(1)
    xyz = (rng.normal(size=(2000, 3)) * 10).astype(np.float32)
    config = VoxelConfig()
    full = voxelize(xyz, config)
    part = voxelize(xyz[xyz[:, 0] > 0], config)
    np.testing.assert_array_equal(
        full.coords[full.point_to_voxel][xyz[:, 0] > 0], part.coords[part.point_to_voxel]
    )


@pytest.mark.parametrize("mode", [VoxelMode.CYLINDRICAL, VoxelMode.CARTESIAN])
def test_empty_and_single_point(mode: VoxelMode) -> None:
    config = VoxelConfig(mode=mode)
    empty = voxelize(np.zeros((0, 3), np.float32), config)
    assert empty.num_voxels == 0 and empty.num_points == 0
    assert empty.coords.shape == (0, 3) and empty.coords.dtype == np.int32
    one = voxelize(np.array([[1.0, 2.0, 3.0]], np.float32), config)
    assert one.num_voxels == 1
    np.testing.assert_array_equal(one.point_to_voxel, [0])
    np.testing.assert_array_equal(one.voxel_to_point, [0])
    np.testing.assert_array_equal(one.counts, [1])


def test_extra_columns_are_ignored() -> None:
    xyzi = np.array([[0.7, 0.1, 0.2, 99.0]], np.float32)
    np.testing.assert_array_equal(voxelize(xyzi, CART_HALF).coords, [[1, 0, 0]])


def test_huge_key_space_falls_back_to_row_unique() -> None:
    config = VoxelConfig(mode=VoxelMode.CARTESIAN, size=(1e-4, 1e-4, 1e-4))
    xyz = np.array([[-1e5, -1e5, -1e5], [1e5, 1e5, 1e5], [1e5, 1e5, 1e5], [0.0, 0.0, 0.0]])
    vox = voxelize(xyz, config)
    assert vox.num_voxels == 3
    _check_invariants(xyz, config, vox)


def test_bad_input_raises_library_errors() -> None:
    with pytest.raises(DatasetError, match="NaN or infinite"):
        voxelize(np.array([[0.0, np.nan, 0.0], [1.0, 1.0, 1.0]]), VoxelConfig())
    with pytest.raises(DatasetError, match=r"\(N, 3\)"):
        voxelize(np.zeros((4, 2)), VoxelConfig())
    with pytest.raises(DatasetError, match="int32 range"):
        voxelize(np.array([[1e9, 0.0, 0.0]]), VoxelConfig(mode=VoxelMode.CARTESIAN, size=(0.1, 0.1, 0.1)))


def test_voxel_mean_and_representative() -> None:
    feats = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]], dtype=np.float32)
    p2v = np.array([1, 0, 1, 1])
    mean = voxel_mean(feats, p2v, 3)
    assert mean.dtype == np.float32 and mean.shape == (3, 2)
    np.testing.assert_allclose(mean, [[3.0, 30.0], [13 / 3, 130 / 3], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(voxel_mean(feats[:, 0].astype(np.float64), p2v, 2), [3.0, 13 / 3])
    rep = voxel_mean(feats, p2v, 2, voxel_to_point=np.array([1, 0]))
    np.testing.assert_array_equal(rep, feats[[1, 0]])
    with pytest.raises(DatasetError):
        voxel_mean(feats, p2v[:3], 2)
    with pytest.raises(DatasetError):
        voxel_mean(feats, np.array([0, 1, 2, 5]), 3)


def test_voxel_mean_matches_voxelization() -> None:
    rng = np.random.default_rng(2)
    xyz = (rng.normal(size=(5000, 3)) * 3).astype(np.float32)
    intensity = rng.random(5000).astype(np.float32)
    vox = voxelize(xyz, VoxelConfig())
    mean = voxel_mean(intensity, vox.point_to_voxel, vox.num_voxels)
    v = int(np.argmax(vox.counts))
    np.testing.assert_allclose(mean[v], intensity[vox.point_to_voxel == v].mean(), rtol=1e-5)
    rep = voxel_mean(intensity, vox.point_to_voxel, vox.num_voxels, voxel_to_point=vox.voxel_to_point)
    np.testing.assert_array_equal(rep, intensity[vox.voxel_to_point])


def test_shift_to_origin() -> None:
    coords = np.array([[-3, 5, 0], [2, -1, 4]], np.int32)
    shifted, offset = shift_to_origin(coords)
    np.testing.assert_array_equal(offset, [-3, -1, 0])
    np.testing.assert_array_equal(shifted, [[0, 6, 0], [5, 0, 4]])
    np.testing.assert_array_equal(shifted + offset, coords)
    empty, zero = shift_to_origin(np.zeros((0, 3), np.int32))
    assert empty.shape == (0, 3) and (zero == 0).all()


def test_150k_points_runs_quickly_and_correctly() -> None:
    """Performance sanity (not a timed assertion): 150k points, both modes."""
    rng = np.random.default_rng(3)
    xyz = (rng.normal(size=(150_000, 3)) * [20, 20, 2]).astype(np.float32)
    for mode in (VoxelMode.CYLINDRICAL, VoxelMode.CARTESIAN):
        config = VoxelConfig(mode=mode, size=(0.1, 1.0, 0.1) if mode == VoxelMode.CYLINDRICAL else (0.1,) * 3)
        start = time.perf_counter()
        vox = voxelize(xyz, config)
        elapsed = time.perf_counter() - start
        assert vox.counts.sum() == 150_000
        np.testing.assert_array_equal(vox.coords[vox.point_to_voxel], cell_coordinates(xyz, config))
        assert elapsed < 5.0  # only guards against a pathological (per-point) regression


def _nuscenes_sweep(root: Path) -> np.ndarray:
    files = sorted((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    if not files:
        pytest.skip(f"no LIDAR_TOP sweep under {root}")
    return np.fromfile(files[0], dtype=np.float32).reshape(-1, 5)


def test_real_nuscenes_sweep(nuscenes_root: Path) -> None:
    points = _nuscenes_sweep(nuscenes_root)
    assert points.shape[0] == 34_688
    config = VoxelConfig()  # SLidR: 0.1 m rho/z, 1 deg azimuth
    vox = voxelize(points[:, :3], config)
    _check_invariants(points[:, :3], config, vox)
    # a 32-beam sweep in 1 deg x 0.1 m cells: many points share voxels, but most voxels stay tiny
    assert 10_000 < vox.num_voxels < points.shape[0]
    assert np.median(vox.counts) <= 2
    assert vox.coords[:, 1].min() >= -180 and vox.coords[:, 1].max() <= 179
    intensity = voxel_mean(
        points[:, 3], vox.point_to_voxel, vox.num_voxels, voxel_to_point=vox.voxel_to_point
    )
    np.testing.assert_array_equal(intensity, points[vox.voxel_to_point, 3])


def test_real_semantickitti_scan(semantickitti_root: Path) -> None:
    scan = semantickitti_root / "sequences" / "00" / "velodyne" / "000000.bin"
    points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
    for config in (VoxelConfig(), VoxelConfig(mode=VoxelMode.CARTESIAN, size=(0.05, 0.05, 0.05))):
        vox = voxelize(points[:, :3], config)
        assert vox.counts.sum() == 124_668
        np.testing.assert_array_equal(vox.coords[vox.point_to_voxel], cell_coordinates(points, config))
        assert vox.num_voxels < points.shape[0]
