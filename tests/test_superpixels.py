"""Superpixels: reference and fast SLIC, quality metrics, cache, external masks, the config entry point."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import scipy.ndimage as ndi

from lidar_ssl_core.config import SuperpixelConfig, SuperpixelMethod
from lidar_ssl_core.errors import ConfigError, SuperpixelError
from lidar_ssl_core.superpixels import (
    SuperpixelCache,
    Superpixelizer,
    boundary_recall,
    enforce_connectivity,
    external_mask_path,
    load_external_mask,
    slic_fast,
    slic_reference,
    undersegmentation_error,
)

Labels = npt.NDArray[np.int32]


def _assert_valid_segmentation(labels: Labels, shape: tuple[int, int]) -> None:
    """Contiguous int32 ids 0..K-1, and every segment exactly one 4-connected region."""
    assert labels.dtype == np.int32 and labels.shape == shape
    assert labels.flags.c_contiguous
    counts = np.bincount(labels.ravel())
    assert int(labels.min()) == 0 and np.all(counts > 0)
    four = ndi.generate_binary_structure(2, 1)
    for k, box in enumerate(ndi.find_objects(labels + 1)):
        assert box is not None
        _, n = ndi.label(labels[box] == k, structure=four)
        assert n == 1, f"segment {k} has {n} 4-connected parts"


def _piecewise_image(seed: int, height: int = 180, width: int = 320) -> tuple[npt.NDArray[np.uint8], Labels]:
    """Random rectangles, discs and polygons on a background, + noise; returns (rgb, ground truth)."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    gt = np.zeros((height, width), np.int32)
    for k in range(1, 13):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        mask = np.zeros((height, width), np.uint8)
        shape_kind = k % 3
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if shape_kind == 0:
            w, h = int(rng.integers(20, 90)), int(rng.integers(15, 70))
            cv2.rectangle(mask, (cx, cy), (cx + w, cy + h), 1, -1)
        elif shape_kind == 1:
            cv2.circle(mask, (cx, cy), int(rng.integers(10, 40)), 1, -1)
        else:
            pts = (rng.normal(0, 30, (5, 2)) + np.array([cx, cy])).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1)
        rgb[mask > 0] = colour
        gt[mask > 0] = k
    noise = rng.normal(0, 6, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8), gt


@pytest.fixture(scope="module")
def nuscenes_small(nuscenes_root: Path) -> npt.NDArray[np.uint8]:
    """CAM_FRONT of the nuScenes fixture, downscaled to 400x225 (a quarter of its width)."""
    path = next(iter(sorted((nuscenes_root / "samples" / "CAM_FRONT").glob("*.jpg"))))
    bgr = cv2.imread(str(path))
    assert bgr is not None and bgr.shape == (900, 1600, 3)
    small = cv2.resize(bgr, (400, 225), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small[..., ::-1])


@pytest.fixture(scope="module")
def synthetic_views() -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]:
    """The six 320x180 camera images of one ``tiny`` synthetic frame with instance-within-class truth."""
    from lidar_ssl_core.synth import generate_world, preset, simulate

    cfg = preset("tiny", n_frames=1, image_width=320, image_height=180)
    frame = next(iter(simulate(generate_world(cfg), cfg)))
    return [(cam.rgb, cam.instance.astype(np.int64) * 64 + cam.semantic) for cam in frame.cameras.values()]


# --- reference --------------------------------------------------------------------------------------


def test_reference_on_real_image(nuscenes_small: npt.NDArray[np.uint8]) -> None:
    labels = slic_reference(nuscenes_small)
    _assert_valid_segmentation(labels, (225, 400))
    assert 60 <= int(labels.max()) + 1 <= 180


def test_reference_rejects_bad_input() -> None:
    with pytest.raises(SuperpixelError, match="uint8"):
        slic_reference(np.zeros((10, 10), np.uint8))
    with pytest.raises(SuperpixelError, match="compactness"):
        slic_reference(np.zeros((10, 10, 3), np.uint8), compactness=0)


# --- fast path --------------------------------------------------------------------------------------


def test_fast_on_real_image_valid_deterministic_comparable(nuscenes_small: npt.NDArray[np.uint8]) -> None:
    fast = slic_fast(nuscenes_small)
    _assert_valid_segmentation(fast, (225, 400))
    np.testing.assert_array_equal(fast, slic_fast(nuscenes_small.copy()))
    n_ref = int(slic_reference(nuscenes_small).max()) + 1
    n_fast = int(fast.max()) + 1
    assert 0.7 * n_ref <= n_fast <= 1.3 * n_ref


@pytest.mark.parametrize(
    ("shape", "sigma", "n_segments"),
    [((180, 320), 3.0, 150), ((181, 317), 3.0, 60), ((120, 160), 0.5, 40), ((37, 53), 3.0, 10)],
)
def test_fast_valid_on_odd_sizes_and_settings(shape: tuple[int, int], sigma: float, n_segments: int) -> None:
    """Odd sizes, the full-resolution (small sigma) path and a single-level image all stay valid."""
    rgb, _ = _piecewise_image(3, *shape)
    labels = slic_fast(rgb, n_segments=n_segments, sigma=sigma)
    _assert_valid_segmentation(labels, shape)
    assert 0.4 * n_segments <= int(labels.max()) + 1 <= 1.5 * n_segments


def test_fast_uniform_image_is_a_regular_grid() -> None:
    labels = slic_fast(np.full((90, 160, 3), 77, np.uint8), n_segments=24)
    _assert_valid_segmentation(labels, (90, 160))
    assert 16 <= int(labels.max()) + 1 <= 30


def test_fast_boundary_recall_matches_reference_on_synthetic_truth(
    synthetic_views: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]],
) -> None:
    views = synthetic_views + [_piecewise_image(seed) for seed in range(4)]
    ref = [boundary_recall(slic_reference(rgb), gt) for rgb, gt in views]
    fast = [boundary_recall(slic_fast(rgb), gt) for rgb, gt in views]
    assert np.mean(ref) > 0.5  # the truth has boundaries SLIC can find
    assert np.mean(fast) >= np.mean(ref) - 0.03
    ue_ref = [undersegmentation_error(slic_reference(rgb), gt) for rgb, gt in views[-4:]]
    ue_fast = [undersegmentation_error(slic_fast(rgb), gt) for rgb, gt in views[-4:]]
    assert np.mean(ue_fast) <= np.mean(ue_ref) + 0.03


def test_fast_rejects_bad_settings() -> None:
    with pytest.raises(SuperpixelError, match="sigma"):
        slic_fast(np.zeros((20, 20, 3), np.uint8), sigma=-1)
    with pytest.raises(SuperpixelError, match="numpy image"):
        slic_fast([[0, 0, 0]])  # type: ignore[arg-type]


def test_enforce_connectivity_splits_and_merges() -> None:
    labels = np.zeros((20, 20), np.int32)
    labels[:, 10:] = 1
    labels[:, 4] = 1  # label 1 in two parts: a 20-px column inside label 0 and the right half
    labels[0, 0] = 2  # a 1-px segment
    out = enforce_connectivity(labels, min_size=5)
    _assert_valid_segmentation(out, (20, 20))
    assert int(out.max()) + 1 == 4  # left of the column, the column, between column and half, half
    assert out[0, 0] == out[1, 0]  # the 1-px segment merged into its neighbour


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_on_hand_made_cases() -> None:
    gt = np.zeros((10, 10), np.int32)
    gt[:, 5:] = 1
    assert boundary_recall(gt, gt) == 1.0
    assert boundary_recall(np.zeros_like(gt), gt) == 0.0
    shifted = np.zeros_like(gt)
    shifted[:, 7:] = 1  # 2 px off: inside the default tolerance, outside a 1-px one
    assert boundary_recall(shifted, gt) == 1.0
    assert boundary_recall(shifted, gt, tolerance_px=1) == 0.0
    assert boundary_recall(gt, np.zeros_like(gt)) == 1.0  # no truth boundary: nothing to miss
    assert undersegmentation_error(gt, gt) == 0.0
    # one superpixel over two halves leaks the smaller half: 50 of 100 pixels
    assert undersegmentation_error(np.zeros_like(gt), gt) == pytest.approx(0.5)
    # 2 of 10 columns of the right segment's superpixel are really the left region's: 20 of 100 px leak
    assert undersegmentation_error(shifted, 1 - gt) == pytest.approx(0.2)
    oversegmented = np.arange(100, dtype=np.int32).reshape(10, 10)
    assert undersegmentation_error(oversegmented, gt) == 0.0


# --- cache ------------------------------------------------------------------------------------------


def test_cache_round_trip_and_corrupt_entry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = SuperpixelCache(tmp_path, "fast:150:6.0:3.0")
    labels = np.random.default_rng(0).integers(0, 70000 - 1, (30, 40)).astype(np.int32) % 65536
    assert cache.get("front", 5, (30, 40)) is None
    cache.put("front", 5, labels)
    got = cache.get("front", 5, (30, 40))
    assert got is not None and got.dtype == np.int32
    np.testing.assert_array_equal(got, labels)
    assert cache.get("front", 5, (31, 40)) is None  # another size: stale
    cache.path("front", 5).write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="lidar_ssl_core.superpixels.cache"):
        assert cache.get("front", 5, (30, 40)) is None
    assert "corrupt" in caplog.text and str(cache.path("front", 5)) in caplog.text
    cache.put("front", 5, labels)  # recomputed entry overwrites the corrupt one
    np.testing.assert_array_equal(cache.get("front", 5, (30, 40)), labels)
    assert not list(cache.path("front", 5).parent.glob(".tmp_*"))
    with pytest.raises(SuperpixelError, match="16-bit"):
        cache.put("front", 6, np.full((2, 2), 70000, np.int32))


def test_cache_settings_give_separate_entries(tmp_path: Path) -> None:
    a = SuperpixelCache(tmp_path, "fast:150:6.0:3.0")
    b = SuperpixelCache(tmp_path, "fast:100:6.0:3.0")
    assert a.path("cam", 1) != b.path("cam", 1)
    a.put("cam", 1, np.zeros((4, 4), np.int32))
    assert b.get("cam", 1, (4, 4)) is None
    assert SuperpixelCache(tmp_path, "x").path("a/b c", 2).parent.name == "a_b_c"


# --- external masks ---------------------------------------------------------------------------------


def test_external_masks_round_trip_and_relabel(tmp_path: Path) -> None:
    base = np.zeros((6, 8), np.int64)
    base[:, 4:] = 300
    base[3:, :] = 7
    expected = np.zeros((6, 8), np.int32)
    expected[:, 4:] = 2
    expected[3:, :] = 1
    cv2.imwrite(str(tmp_path / "u16.png"), base.astype(np.uint16))
    cv2.imwrite(str(tmp_path / "u8.png"), (base % 256).astype(np.uint8))  # 0, 44, 7: same order
    np.save(tmp_path / "arr.npy", base)
    for name in ("u16.png", "u8.png", "arr.npy"):
        got = load_external_mask(tmp_path / name, (6, 8))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)


def test_external_mask_errors(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((6, 8), np.uint8))
    with pytest.raises(SuperpixelError, match=r"m\.png is 8x6 but the image is 9x5"):
        load_external_mask(tmp_path / "m.png", (5, 9))
    with pytest.raises(SuperpixelError, match=r"front[/\\]42\.png"):
        external_mask_path(tmp_path, "front", 42)
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(SuperpixelError, match=r"obj\.npy"):
        load_external_mask(tmp_path / "obj.npy", (1, 1))
    np.save(tmp_path / "f.npy", np.zeros((6, 8), np.float32))
    with pytest.raises(SuperpixelError, match="integer"):
        load_external_mask(tmp_path / "f.npy", (6, 8))


# --- the config entry point -------------------------------------------------------------------------


def test_superpixelizer_dispatch_cache_and_pickle(tmp_path: Path) -> None:
    rgb, _ = _piecewise_image(5, 90, 160)
    for method, segment in ((SuperpixelMethod.FAST, slic_fast), (SuperpixelMethod.SLIC, slic_reference)):
        cfg = SuperpixelConfig(method=method, n_segments=40, cache_dir=tmp_path / method.value)
        sp = Superpixelizer(cfg)
        first = sp(rgb, camera="front", stamp_ns=9)
        np.testing.assert_array_equal(first, segment(rgb, 40, 6.0, 3.0))
        assert sp.cache is not None and sp.cache.path("front", 9).is_file()
        clone = pickle.loads(pickle.dumps(sp))
        np.testing.assert_array_equal(clone(rgb, camera="front", stamp_ns=9), first)  # from the cache
        np.testing.assert_array_equal(clone(rgb, camera="back", stamp_ns=9), first)  # computed
    mask = np.zeros((90, 160), np.uint16)
    mask[:, 80:] = 1000
    (tmp_path / "masks" / "front").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "masks" / "front" / "9.png"), mask)
    ext = Superpixelizer(SuperpixelConfig(method=SuperpixelMethod.EXTERNAL, mask_dir=tmp_path / "masks"))
    assert ext.cache is None
    got = pickle.loads(pickle.dumps(ext))(rgb, camera="front", stamp_ns=9)
    np.testing.assert_array_equal(got, (mask > 0).astype(np.int32))
    with pytest.raises(SuperpixelError, match="expected"):
        ext(rgb, camera="front", stamp_ns=10)


def test_superpixelizer_config_errors() -> None:
    with pytest.raises(ConfigError, match="mask_dir"):
        Superpixelizer(SuperpixelConfig(method=SuperpixelMethod.EXTERNAL))
