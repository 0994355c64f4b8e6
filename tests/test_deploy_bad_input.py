"""Bad clouds give a defined result (empty / ignore labels) or a typed error, on every CPU backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lidar_ssl_core.deploy.demo import random_segmentation_checkpoint
from lidar_ssl_core.deploy.engine import STAGES, SegmentationEngine, load_engine
from lidar_ssl_core.downstream.classes import SYNTHETIC
from lidar_ssl_core.errors import ConfigError, LidarSslError, PointCloudInputError
from lidar_ssl_core.types import PointCloud

IGNORE = SYNTHETIC.ignore_index


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SegmentationEngine:
    ckpt = random_segmentation_checkpoint(tmp_path_factory.mktemp("m") / "tiny.pt", SYNTHETIC, seed=3)
    return load_engine(ckpt, request.param, threads=1 if request.param == "onnxruntime" else None)


def _street(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = rng.uniform(3, 40, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), rng.uniform(-2, 2, n), rng.uniform(0, 1, n)])


def test_empty_cloud_gives_empty_arrays(engine: SegmentationEngine) -> None:
    seg = engine.segment_points(np.zeros((0, 4), np.float32))
    assert seg.labels.shape == (0,) and seg.scores.shape == (0,) and set(seg.timings_ms) == set(STAGES)
    cloud = PointCloud(np.zeros((0, 3), np.float32), np.zeros(0, np.float32), 0, "lidar")
    assert len(engine.segment(cloud).labels) == 0


def test_all_nan_cloud_is_all_ignore(engine: SegmentationEngine) -> None:
    pts = np.full((500, 4), np.nan, np.float32)
    seg = engine.segment_points(pts)
    assert seg.labels.shape == (500,) and bool((seg.labels == IGNORE).all()) and not seg.scores.any()


def test_nan_and_far_points_are_ignored_in_place(engine: SegmentationEngine) -> None:
    pts = _street()
    reference = engine.segment_points(pts)
    bad = pts.copy()
    bad[10, 0] = np.nan
    bad[20, 3] = np.inf  # a non-finite intensity would poison its neighbours' features
    bad[30, :3] = [1e7, 0, 0]  # kilometres beyond the grid
    bad[40, :3] = [0, 0, -1e9]
    seg = engine.segment_points(bad)
    dropped = [10, 20, 30, 40]
    assert bool((seg.labels[dropped] == IGNORE).all()) and not seg.scores[dropped].any()
    keep = np.setdiff1d(np.arange(len(pts)), dropped)
    assert float((seg.labels[keep] == reference.labels[keep]).mean()) > 0.97  # a few voxels lost a point


def test_a_cloud_entirely_outside_the_grid_is_all_ignore(engine: SegmentationEngine) -> None:
    pts = _street(200)
    pts[:, :3] *= 1e6
    seg = engine.segment_points(pts)
    assert bool((seg.labels == IGNORE).all())


def test_two_million_points_are_refused_fast(engine: SegmentationEngine) -> None:
    pts = np.zeros((2_000_000, 4), np.float32)
    with pytest.raises(PointCloudInputError, match=r"2000000 points, more than max_points=1000000"):
        engine.segment_points(pts)


@pytest.mark.parametrize(
    "points",
    [
        np.zeros((10, 3), np.float32),  # no intensity column
        np.zeros((10,), np.float32),
        np.zeros((10, 4, 1), np.float32),
        np.array([["a", "b", "c", "d"]]),
    ],
    ids=["3-columns", "flat", "3d", "strings"],
)
def test_wrong_field_layout_is_a_typed_error(engine: SegmentationEngine, points: np.ndarray) -> None:
    with pytest.raises(PointCloudInputError, match="points must be a numeric"):
        engine.segment_points(points)


def test_point_cloud_with_mismatched_fields_is_a_typed_error(engine: SegmentationEngine) -> None:
    cloud = PointCloud(np.zeros((10, 3), np.float32), np.zeros(9, np.float32), 0, "lidar")
    with pytest.raises(PointCloudInputError, match="intensity must be"):
        engine.segment(cloud)
    with pytest.raises(PointCloudInputError, match="takes a PointCloud"):
        engine.segment(np.zeros((10, 4)))  # type: ignore[arg-type]


def test_unknown_backend_and_missing_gpu_are_typed_errors(tmp_path: Path) -> None:
    ckpt = random_segmentation_checkpoint(tmp_path / "m.pt", SYNTHETIC)
    with pytest.raises(ConfigError, match="unknown backend"):
        load_engine(ckpt, "tensorflow")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(LidarSslError, match="CUDA"):
            load_engine(ckpt, "tensorrt", device="cuda")
    with pytest.raises(LidarSslError, match="does not exist"):
        load_engine(tmp_path / "nothing.pt")
