"""Paired augmentations: each step on hand-made cases, then the pair-consistency invariant over many seeds.

The invariant test builds images whose colour and superpixel id are constant on 50x50 blocks, carries the
original point index as a label and a feature, and checks after the full chain that every pair's pixel is
inside its image, names the same original point, and shows the same superpixel id and colour as the
original pixel did (exactly, away from block borders).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from lidar_ssl_core.augment import (
    PairedSample,
    apply_crop,
    augment_sample,
    crop_params,
    drop_cuboid,
    eval_transform,
    flip_xy,
    hflip,
    random_resized_crop,
    remap_pairs,
    resize_no_crop,
    rotate_z,
    select_points,
)
from lidar_ssl_core.config import AugmentConfig
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.types import PointPixelPairs

BLOCK = 50
# a pair within this many source pixels of a block border may legitimately change block after resizing
# (max source/output scale in these tests is about 900 / 224 ~ 4)
BORDER = 6


# ----------------------------------------------------------------------------------------- builders


def block_maps(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image, superpixels): constant on BLOCK x BLOCK blocks, distinct colour and id per block."""
    rows = np.arange(height)[:, None] // BLOCK
    cols = np.arange(width)[None, :] // BLOCK
    n_cols = -(-width // BLOCK)
    ids = (rows * n_cols + cols).astype(np.int32)
    palette = np.random.default_rng(seed).permutation(256**2)[: ids.max() + 1]
    image = np.stack([palette % 256, palette // 256, (palette * 7) % 256], axis=1).astype(np.uint8)[ids]
    return image, ids


def make_sample(
    rng: np.random.Generator,
    sizes: tuple[tuple[int, int], ...] = ((900, 1600), (375, 1242), (480, 640)),
    n_points: int = 6000,
    pairs_per_camera: int = 3000,
    xyz: np.ndarray | None = None,
    images: tuple[np.ndarray, ...] | None = None,
) -> PairedSample:
    """Random cloud, block images, random pairs (each point at most once per camera), labels = index."""
    if xyz is None:
        xyz = (rng.normal(size=(n_points, 3)) * [15, 15, 1.5]).astype(np.float32)
    n = xyz.shape[0]
    blocks = [block_maps(h, w, seed=c) for c, (h, w) in enumerate(sizes)]
    point_index, camera_index, pixel = [], [], []
    for c, (h, w) in enumerate(sizes):
        pts = rng.choice(n, size=min(pairs_per_camera, n), replace=False)
        point_index.append(pts)
        camera_index.append(np.full(pts.shape[0], c))
        pixel.append(np.stack([rng.integers(0, h, pts.shape[0]), rng.integers(0, w, pts.shape[0])], axis=1))
    pairs = PointPixelPairs(
        np.concatenate(point_index).astype(np.int64),
        np.concatenate(camera_index).astype(np.int64),
        np.concatenate(pixel).astype(np.int64),
    )
    return PairedSample(
        xyz=xyz,
        images=tuple(b[0] for b in blocks) if images is None else images,
        superpixels=tuple(b[1] for b in blocks),
        pairs=pairs,
        features=np.arange(n, dtype=np.float64)[:, None],
        labels=np.arange(n, dtype=np.int64),
    )


def check_pair_consistency(before: PairedSample, after: PairedSample) -> int:
    """Assert the key invariant of every augmentation chain; returns how many pairs were checked exactly.

    ``before`` must carry labels = its own point index and at most one pair per (point, camera).
    """
    assert after.labels is not None and after.features is not None and after.superpixels is not None
    assert before.superpixels is not None and before.labels is not None
    after.validate()  # every pixel inside its image, indices in range
    np.testing.assert_array_equal(after.features[:, 0], after.labels)  # features followed the points
    n_cams = before.num_cameras
    # the same original point, and the same point geometry up to a rotation/flip about z
    original = after.labels[after.pairs.point_index]
    rho_after = np.hypot(after.xyz[:, 0], after.xyz[:, 1])
    rho_before = np.hypot(before.xyz[after.labels, 0], before.xyz[after.labels, 1])
    np.testing.assert_allclose(rho_after, rho_before, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(after.xyz[:, 2], before.xyz[after.labels, 2])
    # find each surviving pair among the original pairs by (original point, camera)
    keys_before = before.labels[before.pairs.point_index] * n_cams + before.pairs.camera_index
    order = np.argsort(keys_before)
    keys_after = original * n_cams + after.pairs.camera_index
    pos = np.searchsorted(keys_before[order], keys_after)
    assert (keys_before[order][pos] == keys_after).all(), "a pair appeared that was not in the input"
    src = order[pos]
    exact = 0
    for c in range(n_cams):
        mine = after.pairs.camera_index == c
        r0, c0 = before.pairs.pixel[src[mine]].T
        r1, c1 = after.pairs.pixel[mine].T
        sp_before = before.superpixels[c][r0, c0]
        sp_after = after.superpixels[c][r1, c1]
        interior = (
            (r0 % BLOCK >= BORDER)
            & (r0 % BLOCK < BLOCK - BORDER)
            & (c0 % BLOCK >= BORDER)
            & (c0 % BLOCK < BLOCK - BORDER)
        )
        # edge blocks can be narrower than BLOCK: exclude pixels near the image's last row/col too
        h, w = before.superpixels[c].shape
        interior &= (r0 < h - BORDER) & (c0 < w - BORDER)
        np.testing.assert_array_equal(sp_after[interior], sp_before[interior])
        np.testing.assert_array_equal(after.images[c][r1, c1][interior], before.images[c][r0, c0][interior])
        exact += int(interior.sum())
        # near borders, the id must still come from a neighbouring block (no wild misplacement)
        n_block_cols = -(-w // BLOCK)
        assert (np.abs(sp_after // n_block_cols - sp_before // n_block_cols) <= 1).all()
        assert (np.abs(sp_after % n_block_cols - sp_before % n_block_cols) <= 1).all()
    return exact


# ----------------------------------------------------------------------------------------- points


def test_rotate_z_uses_one_uniform_draw_and_keeps_geometry() -> None:
    rng = np.random.default_rng(5)
    xyz = rng.normal(size=(500, 3)).astype(np.float32)
    angle = np.random.default_rng(42).uniform(0.0, 2 * math.pi)
    out = rotate_z(xyz, np.random.default_rng(42))
    assert out.dtype == np.float32
    expected_x = xyz[:, 0] * math.cos(angle) - xyz[:, 1] * math.sin(angle)
    expected_y = xyz[:, 0] * math.sin(angle) + xyz[:, 1] * math.cos(angle)
    np.testing.assert_allclose(out[:, 0], expected_x, atol=1e-5)
    np.testing.assert_allclose(out[:, 1], expected_y, atol=1e-5)
    np.testing.assert_array_equal(out[:, 2], xyz[:, 2])
    angles = [np.random.default_rng(s).uniform(0.0, 2 * math.pi) for s in range(200)]
    assert min(angles) >= 0 and max(angles) < 2 * math.pi and max(angles) > 5.5


def test_flip_xy_covers_all_four_sign_patterns() -> None:
    xyz = np.array([[1.0, 2.0, 3.0]], np.float32)
    seen = set()
    for seed in range(64):
        out = flip_xy(xyz, np.random.default_rng(seed))
        assert out[0, 2] == 3.0 and abs(out[0, 0]) == 1.0 and abs(out[0, 1]) == 2.0
        seen.add((float(out[0, 0]), float(out[0, 1])))
    assert seen == {(1.0, 2.0), (-1.0, 2.0), (1.0, -2.0), (-1.0, -2.0)}


def grid_cloud() -> np.ndarray:
    """Points on an 11 x 11 x 11 integer grid, range 10 on every axis."""
    g = np.arange(11, dtype=np.float32)
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


def test_drop_cuboid_reference_semantics() -> None:
    xyz = grid_cloud()
    pairs = PointPixelPairs.empty()
    for seed in range(20):
        draws = np.random.default_rng(seed)
        fraction = draws.random() * 0.5
        centre = xyz[draws.integers(xyz.shape[0])]
        keep = drop_cuboid(xyz, pairs, np.random.default_rng(seed), max_fraction=0.5, min_pairs=0)
        half = 10 * fraction / 2
        inside = (np.abs(xyz - centre) < half).all(axis=1)  # strict: points on the faces stay
        np.testing.assert_array_equal(keep, ~inside)
        if half > 0:
            assert not keep[np.flatnonzero((xyz == centre).all(axis=1))[0]]


def test_drop_cuboid_hand_case() -> None:
    xyz = grid_cloud()
    # find a seed whose draw is a 0.4-fraction cuboid: half-extent 10 * f / 2
    rng = np.random.default_rng(3)
    f = rng.random() * 0.5
    centre = xyz[rng.integers(xyz.shape[0])]
    keep = drop_cuboid(xyz, PointPixelPairs.empty(), np.random.default_rng(3), max_fraction=0.5, min_pairs=0)
    side = np.arange(11)
    per_axis = [int(((side > c - 5 * f) & (side < c + 5 * f)).sum()) for c in centre]
    assert int((~keep).sum()) == per_axis[0] * per_axis[1] * per_axis[2]


def test_drop_cuboid_is_skipped_when_a_camera_would_lose_too_many_pairs() -> None:
    xyz = grid_cloud()
    n = xyz.shape[0]
    # camera 0 sees every point (1331 pairs), camera 1 sees 10 points
    pairs = PointPixelPairs(
        np.concatenate([np.arange(n), np.arange(10)]),
        np.concatenate([np.zeros(n, np.int64), np.ones(10, np.int64)]),
        np.zeros((n + 10, 2), np.int64),
    )
    dropped_any = False
    for seed in range(30):
        keep = drop_cuboid(xyz, pairs, np.random.default_rng(seed), max_fraction=0.6, min_pairs=1300)
        lost_cam0 = n - int(keep.sum())
        lost_cam1 = 10 - int(keep[:10].sum())
        # camera 0 may go down to 1300 pairs, camera 1 (already < 1300) may lose none
        assert lost_cam0 <= 31 and lost_cam1 == 0
        dropped_any |= lost_cam0 > 0
    assert dropped_any
    # an impossible constraint: every draw is rejected -> nothing dropped
    keep = drop_cuboid(xyz, pairs, np.random.default_rng(0), max_fraction=0.6, min_pairs=n, max_draws=5)
    assert keep.all()


def test_drop_cuboid_redraws_when_asked() -> None:
    xyz = grid_cloud()
    n = xyz.shape[0]
    pairs = PointPixelPairs(np.arange(n), np.zeros(n, np.int64), np.zeros((n, 2), np.int64))
    once = [
        drop_cuboid(xyz, pairs, np.random.default_rng(s), max_fraction=1.0, min_pairs=1200) for s in range(40)
    ]
    many = [
        drop_cuboid(xyz, pairs, np.random.default_rng(s), max_fraction=1.0, min_pairs=1200, max_draws=20)
        for s in range(40)
    ]
    assert all((n - k.sum()) <= n - 1200 for k in once + many)
    assert sum(not k.all() for k in many) > sum(not k.all() for k in once)


def test_drop_cuboid_edge_cases() -> None:
    pairs = PointPixelPairs.empty()
    assert drop_cuboid(np.zeros((0, 3), np.float32), pairs, np.random.default_rng(0)).shape == (0,)
    assert drop_cuboid(grid_cloud(), pairs, np.random.default_rng(0), max_fraction=0.0).all()


def test_remap_pairs_and_select_points_hand_case() -> None:
    keep = np.array([True, False, True, True])
    pairs = PointPixelPairs(
        np.array([0, 1, 3, 2, 1]),
        np.array([0, 0, 1, 1, 2]),
        np.array([[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]),
    )
    out = remap_pairs(pairs, keep)
    np.testing.assert_array_equal(out.point_index, [0, 2, 1])
    np.testing.assert_array_equal(out.camera_index, [0, 1, 1])
    np.testing.assert_array_equal(out.pixel, [[1, 1], [3, 3], [4, 4]])
    sample = PairedSample(
        xyz=np.arange(12, dtype=np.float32).reshape(4, 3),
        images=tuple(np.zeros((8, 8, 3), np.uint8) for _ in range(3)),
        pairs=pairs,
        features=np.array([[10.0], [11.0], [12.0], [13.0]]),
        labels=np.array([7, 8, 9, 10]),
    )
    sub = select_points(sample, keep)
    assert sub.labels is not None and sub.features is not None
    np.testing.assert_array_equal(sub.xyz, sample.xyz[[0, 2, 3]])
    np.testing.assert_array_equal(sub.labels, [7, 9, 10])
    np.testing.assert_array_equal(sub.features[:, 0], [10.0, 12.0, 13.0])
    np.testing.assert_array_equal(sub.labels[sub.pairs.point_index], [7, 10, 9])
    assert select_points(sample, np.ones(4, bool)) is sample
    with pytest.raises(DatasetError):
        select_points(sample, np.ones(3, bool))


# ----------------------------------------------------------------------------------------- images


def test_crop_params_follow_torchvision_semantics() -> None:
    height, width = 900, 1600
    for seed in range(300):
        top, left, h, w = crop_params(height, width, np.random.default_rng(seed))
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        # area fraction in [0.3, 1] and aspect in [14/9, 17/9], up to the rounding of h and w
        assert 0.3 * 0.995 <= h * w / (height * width) <= 1.0
        assert 14 / 9 - 0.02 <= w / h <= 17 / 9 + 0.02


def test_crop_params_falls_back_to_a_centre_crop() -> None:
    # a tall image: no crop with w/h >= 14/9 covers 30% of it, so all 10 tries fail
    top, left, h, w = crop_params(1000, 100, np.random.default_rng(0))
    assert (w, h) == (100, round(100 / (14 / 9)))
    assert (top, left) == ((1000 - h) // 2, 0)
    # a very wide image, scale forcing the whole area: centre crop at the max ratio
    top, left, h, w = crop_params(100, 1000, np.random.default_rng(0), scale=(1.0, 1.0))
    assert (h, w) == (100, round(100 * 17 / 9)) and (top, left) == (0, (1000 - w) // 2)


def test_apply_crop_hand_case_upsampling() -> None:
    image = np.arange(64 * 3, dtype=np.uint8).reshape(8, 8, 3)
    sp = np.arange(64, dtype=np.int64).reshape(8, 8)
    pairs = PointPixelPairs(
        np.array([0, 1, 2, 3]), np.zeros(4, np.int64), np.array([[2, 2], [5, 5], [6, 6], [1, 3]])
    )
    res = apply_crop(image, sp, pairs, (2, 2, 4, 4), (8, 8))
    np.testing.assert_array_equal(res.keep, [True, True, False, False])
    np.testing.assert_array_equal(res.pairs.point_index, [0, 1])
    np.testing.assert_array_equal(res.pairs.pixel, [[1, 1], [7, 7]])
    # 2x nearest upsampling of the crop, exact ids and dtype
    np.testing.assert_array_equal(res.superpixels, np.kron(sp[2:6, 2:6], np.ones((2, 2), np.int64)))
    assert res.superpixels is not None and res.superpixels.dtype == np.int64
    assert res.image.shape == (8, 8, 3) and res.image.dtype == np.uint8
    assert res.box == (2, 2, 4, 4)
    # upsampling: every kept pair keeps its exact superpixel id, border or not
    for (r0, c0), (r1, c1) in zip(pairs.pixel[res.keep], res.pairs.pixel, strict=True):
        assert res.superpixels[r1, c1] == sp[r0, c0]


def test_apply_crop_downsampling_maps_pixel_centres() -> None:
    sp = np.arange(100 * 200).reshape(100, 200)
    rows, cols = np.meshgrid(np.arange(100), np.arange(200), indexing="ij")
    pairs = PointPixelPairs(
        np.arange(sp.size), np.zeros(sp.size, np.int64), np.stack([rows.ravel(), cols.ravel()], 1)
    )
    image = np.zeros((100, 200, 3), np.uint8)
    res = apply_crop(image, sp, pairs, (0, 0, 100, 200), (50, 25))  # 4x smaller in both axes
    assert res.keep.all()
    np.testing.assert_array_equal(res.pairs.pixel[:, 0], rows.ravel() // 4)
    np.testing.assert_array_equal(res.pairs.pixel[:, 1], cols.ravel() // 4)
    # nearest samples the centre-most source pixel of each 4x4 cell: (4r + 2, 4c + 2)
    np.testing.assert_array_equal(res.superpixels, sp[2::4, 2::4])


def test_apply_crop_image_matches_cv2_on_the_crop() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    res = apply_crop(image, None, PointPixelPairs.empty(), (10, 20, 200, 350), (416, 224))
    expected = cv2.resize(
        np.ascontiguousarray(image[10:210, 20:370]), (416, 224), interpolation=cv2.INTER_LINEAR
    )
    np.testing.assert_array_equal(res.image, expected)
    assert res.superpixels is None


def test_random_resized_crop_keeps_exactly_the_pairs_inside_the_box() -> None:
    image, sp = block_maps(900, 1600)
    rng = np.random.default_rng(1)
    m = 30_000
    pairs = PointPixelPairs(
        np.arange(m), np.zeros(m, np.int64), np.stack([rng.integers(0, 900, m), rng.integers(0, 1600, m)], 1)
    )
    for seed in range(30):
        res = random_resized_crop(image, sp, pairs, np.random.default_rng(seed))
        top, left, h, w = res.box
        r, c = pairs.pixel.T
        inside = (r >= top) & (r < top + h) & (c >= left) & (c < left + w)
        np.testing.assert_array_equal(res.keep, inside)
        assert res.keep.sum() > 1024 or res.keep.mean() > 0.75
        assert res.image.shape == (224, 416, 3) and res.superpixels is not None
        assert res.superpixels.shape == (224, 416) and res.superpixels.dtype == sp.dtype
        assert (res.pairs.pixel >= 0).all() and (res.pairs.pixel < [224, 416]).all()
        # the crop is a plain torchvision draw (same generator state -> same first box)
        assert res.box == crop_params(900, 1600, np.random.default_rng(seed))


def test_random_resized_crop_redraws_then_falls_back_to_full_resize() -> None:
    image, sp = block_maps(900, 1600)
    corners = np.array([[0, 0], [0, 1599], [899, 0], [899, 1599]] * 50)
    pairs = PointPixelPairs(np.arange(200), np.zeros(200, np.int64), corners)
    # no crop of <= 31% of the area holds all four corners, and 200 pairs < min_pairs
    res = random_resized_crop(
        image, sp, pairs, np.random.default_rng(0), scale=(0.3, 0.31), min_fraction=0.99
    )
    assert res.box == (0, 0, 900, 1600) and res.keep.all()
    np.testing.assert_array_equal(res.pairs.pixel, resize_no_crop(image, sp, pairs).pairs.pixel)
    # accepted on the count alone although only about a third of the pairs survives
    rows, cols = np.meshgrid(np.arange(5, 900, 30), np.arange(5, 1600, 30), indexing="ij")
    grid = PointPixelPairs(
        np.arange(rows.size), np.zeros(rows.size, np.int64), np.stack([rows.ravel(), cols.ravel()], 1)
    )
    res = random_resized_crop(
        image, sp, grid, np.random.default_rng(0), scale=(0.3, 0.31), min_pairs=100, min_fraction=0.99
    )
    assert res.box == crop_params(900, 1600, np.random.default_rng(0), scale=(0.3, 0.31))
    assert 100 < res.keep.sum() < 0.5 * rows.size
    # no pairs at all: the first draw is accepted
    res = random_resized_crop(image, sp, PointPixelPairs.empty(), np.random.default_rng(4))
    assert res.box == crop_params(900, 1600, np.random.default_rng(4))


def test_resize_no_crop_keeps_every_pair() -> None:
    image, sp = block_maps(375, 1242)
    rng = np.random.default_rng(2)
    pairs = PointPixelPairs(
        np.arange(500),
        np.zeros(500, np.int64),
        np.stack([rng.integers(0, 375, 500), rng.integers(0, 1242, 500)], 1),
    )
    res = resize_no_crop(image, sp, pairs, out_size=(416, 224))
    assert res.keep.all() and res.image.shape == (224, 416, 3) and res.box == (0, 0, 375, 1242)
    np.testing.assert_array_equal(res.pairs.pixel[:, 0], np.floor((pairs.pixel[:, 0] + 0.5) * 224 / 375))
    np.testing.assert_array_equal(res.pairs.pixel[:, 1], np.floor((pairs.pixel[:, 1] + 0.5) * 416 / 1242))


def test_hflip() -> None:
    image, sp = block_maps(224, 416)
    pairs = PointPixelPairs(np.array([0, 1]), np.zeros(2, np.int64), np.array([[3, 0], [100, 415]]))
    res = hflip(image, sp, pairs, np.random.default_rng(0), p=1.0)
    assert res.flipped and res.image.flags.c_contiguous and res.superpixels is not None
    assert res.superpixels.flags.c_contiguous
    np.testing.assert_array_equal(res.pairs.pixel, [[3, 415], [100, 0]])
    np.testing.assert_array_equal(res.image, image[:, ::-1])
    for (r0, c0), (r1, c1) in zip(pairs.pixel, res.pairs.pixel, strict=True):
        assert res.superpixels[r1, c1] == sp[r0, c0]
        np.testing.assert_array_equal(res.image[r1, c1], image[r0, c0])
    same = hflip(image, sp, pairs, np.random.default_rng(0), p=0.0)
    assert not same.flipped and same.image is image and same.pairs is pairs
    flips = [hflip(image, None, pairs, np.random.default_rng(s)).flipped for s in range(200)]
    assert 60 < sum(flips) < 140


# ----------------------------------------------------------------------------------------- composed


@pytest.mark.parametrize("seed", range(40))
def test_augment_chain_keeps_pairs_consistent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sample = make_sample(rng)
    config = AugmentConfig(min_pairs=1024 if seed % 2 else 100, cuboid_max_fraction=0.2 if seed % 3 else 0.6)
    out, point_keep = augment_sample(sample, config, rng)
    assert point_keep.shape == (sample.num_points,) and point_keep.dtype == bool
    assert out.labels is not None
    np.testing.assert_array_equal(out.labels, np.flatnonzero(point_keep))
    assert all(im.shape == (224, 416, 3) for im in out.images)
    assert out.superpixels is not None and all(s.shape == (224, 416) for s in out.superpixels)
    exact = check_pair_consistency(sample, out)
    assert exact > 0.5 * len(out.pairs)
    # pairs stay in input order (grouped by camera here); each crop obeyed the acceptance rule
    assert (np.diff(out.pairs.camera_index) >= 0).all()
    survived = point_keep[sample.pairs.point_index]
    before_crop = np.bincount(sample.pairs.camera_index[survived], minlength=3)
    after = np.bincount(out.pairs.camera_index, minlength=3)
    accepted = (
        (after == before_crop) | (after > config.min_pairs) | (after > config.min_pair_fraction * before_crop)
    )
    assert accepted.all()


def test_augment_chain_with_shuffled_pairs_restores_input_order() -> None:
    rng = np.random.default_rng(7)
    sample = make_sample(rng)
    perm = rng.permutation(len(sample.pairs))
    shuffled = PairedSample(
        sample.xyz,
        sample.images,
        sample.pairs.select(perm),
        sample.superpixels,
        sample.features,
        sample.labels,
    )
    for seed in range(5):
        out, _ = augment_sample(shuffled, AugmentConfig(), np.random.default_rng(seed))
        check_pair_consistency(shuffled, out)
        assert shuffled.labels is not None and out.labels is not None
        # surviving pairs keep the input's relative order
        key_in = shuffled.labels[shuffled.pairs.point_index] * 3 + shuffled.pairs.camera_index
        key_out = out.labels[out.pairs.point_index] * 3 + out.pairs.camera_index
        rank = {int(k): i for i, k in enumerate(key_in)}
        assert all(np.diff([rank[int(k)] for k in key_out]) > 0)


def test_augment_is_deterministic_per_seed() -> None:
    sample = make_sample(np.random.default_rng(0))
    a, ka = augment_sample(sample, AugmentConfig(), np.random.default_rng(11))
    b, kb = augment_sample(sample, AugmentConfig(), np.random.default_rng(11))
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_array_equal(a.xyz, b.xyz)
    np.testing.assert_array_equal(a.pairs.pixel, b.pairs.pixel)
    for x, y in zip(a.images, b.images, strict=True):
        np.testing.assert_array_equal(x, y)


def test_disabled_augmentation_is_the_eval_transform() -> None:
    sample = make_sample(np.random.default_rng(3))
    out, keep = augment_sample(sample, AugmentConfig(enabled=False), np.random.default_rng(0))
    assert keep.all() and len(out.pairs) == len(sample.pairs)
    np.testing.assert_array_equal(out.xyz, sample.xyz)
    ref = eval_transform(sample, AugmentConfig())
    np.testing.assert_array_equal(out.pairs.pixel, ref.pairs.pixel)
    assert all(im.shape == (224, 416, 3) for im in out.images)
    check_pair_consistency(sample, out)


def test_individual_steps_can_be_switched_off() -> None:
    sample = make_sample(np.random.default_rng(4))
    config = AugmentConfig(rotate_z=False, flip_xy=False, drop_cuboid=False, hflip_prob=0.0)
    out, keep = augment_sample(sample, config, np.random.default_rng(0))
    assert keep.all()
    np.testing.assert_array_equal(out.xyz, sample.xyz)
    check_pair_consistency(sample, out)


def test_sample_without_superpixels_features_or_labels() -> None:
    full = make_sample(np.random.default_rng(5))
    bare = PairedSample(full.xyz, full.images, full.pairs)
    out, keep = augment_sample(bare, AugmentConfig(), np.random.default_rng(0))
    assert out.superpixels is None and out.features is None and out.labels is None
    assert out.num_points == int(keep.sum())
    out.validate()


def test_validate_names_the_problem() -> None:
    sample = make_sample(np.random.default_rng(6), n_points=100, pairs_per_camera=50)
    bad_pixel = sample.pairs.pixel.copy()
    bad_pixel[0] = [900, 0]
    cases = {
        "outside its image": PointPixelPairs(sample.pairs.point_index, sample.pairs.camera_index, bad_pixel),
        "point_index": PointPixelPairs(
            sample.pairs.point_index + 100, sample.pairs.camera_index, sample.pairs.pixel
        ),
        "camera_index": PointPixelPairs(
            sample.pairs.point_index, sample.pairs.camera_index + 1, sample.pairs.pixel
        ),
    }
    for message, pairs in cases.items():
        with pytest.raises(DatasetError, match=message):
            augment_sample(
                PairedSample(sample.xyz, sample.images, pairs, sample.superpixels),
                AugmentConfig(),
                np.random.default_rng(0),
            )
    assert sample.superpixels is not None
    with pytest.raises(DatasetError, match="superpixel map"):
        PairedSample(sample.xyz, sample.images, sample.pairs, (sample.superpixels[0][:10],) * 3).validate()
    with pytest.raises(DatasetError, match="labels"):
        PairedSample(sample.xyz, sample.images, sample.pairs, labels=np.zeros(3, np.int64)).validate()


def test_real_nuscenes_cloud_and_images(nuscenes_root: Path) -> None:
    """Real sweep and real camera images; pairs are synthetic, checked through the block superpixels
    (exact) and through the real image content (the colour at a pair barely changes)."""
    sweep = sorted((nuscenes_root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
    cams = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK"]
    jpgs = [sorted((nuscenes_root / "samples" / cam).glob("*.jpg")) for cam in cams]
    if not sweep or not all(jpgs):
        pytest.skip(f"nuScenes sweep or images missing under {nuscenes_root}")
    xyz = np.fromfile(sweep[0], dtype=np.float32).reshape(-1, 5)[:, :3].copy()
    images = tuple(_read_rgb(j[0]) for j in jpgs)
    assert all(im.shape == (900, 1600, 3) for im in images)
    rng = np.random.default_rng(0)
    sample = make_sample(rng, sizes=((900, 1600),) * 3, xyz=xyz, images=images, pairs_per_camera=4000)
    block_sample = make_sample(
        np.random.default_rng(0), sizes=((900, 1600),) * 3, xyz=xyz, pairs_per_camera=4000
    )
    for seed in range(5):
        out, keep = augment_sample(sample, AugmentConfig(), np.random.default_rng(seed))
        out_blocks, keep_blocks = augment_sample(block_sample, AugmentConfig(), np.random.default_rng(seed))
        np.testing.assert_array_equal(keep, keep_blocks)
        np.testing.assert_array_equal(out.pairs.pixel, out_blocks.pairs.pixel)
        check_pair_consistency(block_sample, out_blocks)
        # real content: colour at the mapped pixel vs at the original pixel, against a random pairing
        src = _original_pixels(sample, out)
        errors, shuffled = [], []
        for c in range(3):
            mine = out.pairs.camera_index == c
            r1, c1 = out.pairs.pixel[mine].T
            r0, c0 = src[mine].T
            after = out.images[c][r1, c1].astype(np.float64)
            errors.append(np.abs(after - images[c][r0, c0]).mean())
            shuffled.append(np.abs(after - images[c][np.roll(r0, 1), np.roll(c0, 1)]).mean())
        assert max(errors) < 0.35 * min(shuffled)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, f"cannot read {path}"
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _original_pixels(before: PairedSample, after: PairedSample) -> np.ndarray:
    assert before.labels is not None and after.labels is not None
    n_cams = before.num_cameras
    keys_before = before.labels[before.pairs.point_index] * n_cams + before.pairs.camera_index
    order = np.argsort(keys_before)
    keys_after = after.labels[after.pairs.point_index] * n_cams + after.pairs.camera_index
    src: np.ndarray = before.pairs.pixel[order[np.searchsorted(keys_before[order], keys_after)]]
    return src
